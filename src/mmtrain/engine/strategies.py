"""Lightning's strategies with mmtrain's checkpoint manifest: every checkpoint a strategy writes, a single file or
a folder of shards, is listed (sha256 + size of every file), verified before it is read and rotated the same way.

Lightning's ``ModelParallelStrategy`` (with ``save_distributed_checkpoint``) and ``DeepSpeedStrategy`` write
folders past ``CheckpointIO``: no manifest would list them, ``resume=`` would not find them and rotation would
never remove them. The subclasses here write the same folders under a temporary name, have every rank hash a
share of the files, and commit the folder to the manifest on rank 0 once all of it is on disk
(:mod:`mmtrain.engine.sharded_checkpoints`).

* :class:`ManifestModelParallelStrategy`: FSDP2 (``trainer=fsdp2``: one full state through ``CheckpointIO``;
  ``trainer=fsdp2_sharded``: each rank's DCP shards).
* :class:`BlockWrapFSDPStrategy`: FSDP v1 on GPUs (``trainer=fsdp``), its auto-wrap policy derived from the model.
* :class:`ManifestDeepSpeedStrategy`: ZeRO stage 1-3 (``trainer=deepspeed_zero2`` / ``deepspeed_zero3`` and the
  ``_offload`` variants): DeepSpeed's own checkpoint folder. Also runs on CPUs (DeepSpeed's CPU accelerator over
  gloo), where Lightning's class stops: that is how it is tested without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.strategies.ddp import DDPStrategy

from mmtrain.core.fileio import temporary_folder_beside


class FolderCheckpoints:
    """What both strategies add: write a checkpoint folder under a temporary name, hash it (each rank a share of the
    files), commit it to the manifest on rank 0; verify a checkpoint against the manifest before loading it.

    Attributes:
        shards_written_hooks: called on every rank once the whole folder is on disk and before it is committed
            (fault rehearsal: :class:`~mmtrain.engine.callbacks.faults.KillSwitch` ``hook=shards_written``).
    """

    shards_written_hooks: list[Callable[[], None]]

    @property
    def sharded_checkpoints(self) -> bool:
        """Whether checkpoints are folders (the hooks above fire)."""
        return True

    def save_folder(self, checkpoint: dict[str, Any], filepath: Any, write: Callable[[Path], None]) -> None:
        """``write(folder)`` on every rank (the strategy's own save, a collective), then list and commit the folder
        as ``filepath``; ``checkpoint``: what the manifest records (global step, epoch)."""
        from mmtrain.engine.sharded_checkpoints import folder_files, hash_file

        path = Path(self.broadcast(str(Path(filepath).absolute())))
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(self.broadcast(str(temporary_folder_beside(path)) if self.is_global_zero else None))
        write(folder)
        self.barrier("mmtrain checkpoint folder written")
        names = folder_files(folder)
        mine = {name: hash_file(folder / name) for name in names[self.global_rank::self.world_size]}
        listing: dict[str, dict[str, Any]] = {}
        for part in _all_gather_objects(mine):
            listing.update(part)
        for hook in self.shards_written_hooks:
            hook()
        if self.is_global_zero:
            self.checkpoint_io.commit_folder(folder, path, listing, checkpoint)
        self.barrier("mmtrain checkpoint folder committed")

    def verified(self, checkpoint_path: Any) -> Path:
        """``checkpoint_path`` (rank 0's) once it verifies against its manifest, file or folder."""
        from mmtrain.engine.callbacks.checkpoint_manifest import verify_checkpoint

        path = Path(self.broadcast(str(checkpoint_path)))
        verify_checkpoint(path)
        return path


class ManifestModelParallelStrategy(FolderCheckpoints, ModelParallelStrategy):
    """``ModelParallelStrategy`` whose sharded (DCP) checkpoint folders go through the manifest."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shards_written_hooks = []

    @property
    def sharded_checkpoints(self) -> bool:
        return bool(self._save_distributed_checkpoint)

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options")
        from lightning.fabric.strategies.fsdp import _distributed_checkpoint_save

        from mmtrain.engine.sharded_checkpoints import META_NAME

        state = {"state_dict": checkpoint.pop("state_dict"),
                 **{f"optimizer_{i}": s for i, s in enumerate(checkpoint.pop("optimizer_states", []))}}

        def write(folder: Path) -> None:
            _distributed_checkpoint_save(state, folder)  # a collective: every rank writes __<rank>_0.distcp
            if self.is_global_zero:
                torch.save(checkpoint, folder / META_NAME)

        self.save_folder(checkpoint, filepath, write)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Verify the checkpoint (file or folder), then Lightning's load (a folder: every rank reads its shards)."""
        return super().load_checkpoint(self.verified(checkpoint_path), weights_only=weights_only)


class ManifestDeepSpeedStrategy(FolderCheckpoints, DeepSpeedStrategy):
    """``DeepSpeedStrategy`` whose checkpoint folders (DeepSpeed's ``checkpoint/`` of model and ZeRO-partitioned
    optimizer states, ``latest``, ``zero_to_fp32.py``) go through the manifest; also runs on CPUs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shards_written_hooks = []
        stage = (self.config or {}).get("zero_optimization", {}).get("stage")
        if stage not in (1, 2, 3):
            raise ValueError(f"trainer.strategy.stage (DeepSpeed's zero_optimization.stage) is {stage!r}: mmtrain "
                             "trains and resumes ZeRO stages 1, 2 and 3 (trainer=deepspeed_zero2 / deepspeed_zero3).")
        if self.load_full_weights:
            raise ValueError("trainer.strategy.load_full_weights=true loads one full-state file, but every DeepSpeed "
                             "checkpoint of mmtrain is a folder (what resume= continues from): remove the key.")
        if self.exclude_frozen_parameters:
            raise ValueError("trainer.strategy.exclude_frozen_parameters=true leaves the frozen weights out of each "
                             "checkpoint, so resume= and export could not rebuild the model: remove the key.")

    def setup_environment(self) -> None:
        from lightning.pytorch.accelerators import CPUAccelerator

        if isinstance(self.accelerator, CPUAccelerator):  # DeepSpeed's CPU accelerator: gloo, no CUDA check
            DDPStrategy.setup_environment(self)
            return
        super().setup_environment()

    @property
    def root_device(self) -> torch.device:
        """On CPUs ``cpu:<local rank>`` (tensors land on the one CPU device all the same): DeepSpeed reads the index
        as this process's device rank, which a bare ``cpu`` lacks."""
        device = super().root_device
        return torch.device("cpu", self.local_rank) if device.type == "cpu" else device

    def setup_distributed(self) -> None:
        from lightning.fabric.utilities.seed import reset_seed
        from lightning.pytorch.accelerators import CPUAccelerator

        if isinstance(self.accelerator, CPUAccelerator):  # CPU devices have no index to check against local ranks
            reset_seed()
            self.set_world_ranks()
            self._init_deepspeed_distributed()
            return
        super().setup_distributed()

    def _initialize_deepspeed_inference(self, model: Any) -> None:
        """Lightning removes every module hook before it initialises DeepSpeed for evaluation (the training engine's
        ZeRO-3 hooks must go), transformers' output-capturing hooks included (hidden states would come back empty):
        the hooks DeepSpeed did not register are put back after."""
        kept = _hooks_not_from_deepspeed(model)
        super()._initialize_deepspeed_inference(model)
        for module, attribute, hooks in kept:
            getattr(module, attribute).update(hooks)

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        parent = super()
        self.save_folder(checkpoint, filepath,
                         lambda folder: parent.save_checkpoint(checkpoint, folder, storage_options))

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        return super().load_checkpoint(self.verified(checkpoint_path), weights_only=weights_only)


class BlockWrapFSDPStrategy(FSDPStrategy):
    """Lightning's ``FSDPStrategy`` (FSDP v1, CUDA only; ``trainer=fsdp``) whose auto-wrap policy, unless one is
    given, is derived from the model: each block class its models declare is an FSDP unit
    (:func:`mmtrain.engine.sharding.block_wrap_policy`). Checkpoints are full state dicts through ``CheckpointIO``
    (the manifest); sharded checkpoints are FSDP2's (``trainer=fsdp2_sharded``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("state_dict_type", "full") != "full":
            raise ValueError("trainer.strategy.state_dict_type must be 'full' under trainer=fsdp (one file through the "
                             "checkpoint manifest); for sharded checkpoints use trainer=fsdp2_sharded.")
        super().__init__(*args, **kwargs)

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        from mmtrain.engine.sharding import block_wrap_policy

        wrapped = any(isinstance(m, FullyShardedDataParallel) for m in model.modules())
        if not wrapped and "auto_wrap_policy" not in self.kwargs:
            self.kwargs["auto_wrap_policy"] = block_wrap_policy(model)
        return super()._setup_model(model)


def load_best_weights(trainer: Any, pl_module: Any, best: str | Path) -> None:
    """Load the weights of the verified checkpoint ``best`` (file or folder) into the training module, however the
    strategy holds them: DeepSpeed's engine (module only), FSDP2 shards (each rank its part), or whole (every rank)."""
    from mmtrain.engine.callbacks.checkpoint_io import load_verified
    from mmtrain.engine.callbacks.checkpoint_manifest import verify_checkpoint
    from mmtrain.engine.sharded_checkpoints import is_sharded_checkpoint, load_sharded_weights
    from mmtrain.engine.sharding import is_sharded, load_full_state

    strategy = getattr(trainer, "strategy", None)
    if isinstance(strategy, FSDPStrategy):  # FSDP v1: Lightning loads a full state into the flat shards
        strategy.load_model_state_dict(load_verified(best))
    elif isinstance(strategy, DeepSpeedStrategy):
        verify_checkpoint(best)
        strategy.deepspeed_engine.load_checkpoint(str(best), tag="checkpoint", load_module_only=True,
                                                  load_optimizer_states=False, load_lr_scheduler_states=False)
    elif is_sharded_checkpoint(best):  # every rank reads its own shards of the verified folder
        verify_checkpoint(best)
        load_sharded_weights(pl_module, Path(best))
    elif is_sharded(pl_module):  # a full state dict into FSDP2 shards: every rank cuts its part
        load_full_state(pl_module, load_verified(best)["state_dict"])
    else:
        pl_module.load_state_dict(load_verified(best)["state_dict"])


def full_model_state(trainer: Any, pl_module: Any) -> dict[str, torch.Tensor] | None:
    """The training module's whole state dict where the strategy holds its parameters apart (FSDP2 shards, ZeRO-3
    partitions, ZeRO-1/2's flat buffers), gathered on every rank (a collective); ``None`` where they are plain."""
    import contextlib

    from mmtrain.engine.sharding import is_sharded

    strategy = getattr(trainer, "strategy", None)
    if isinstance(strategy, FSDPStrategy):
        return strategy.lightning_module_state_dict()  # full, on rank 0 (a collective)
    if isinstance(strategy, DeepSpeedStrategy):
        import deepspeed

        gathered = (deepspeed.zero.GatheredParameters(list(pl_module.parameters()), modifier_rank=None)
                    if strategy.zero_stage_3 else contextlib.nullcontext())
        with gathered:  # copies: the parameters are views of DeepSpeed's flat buffers
            return {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}
    if is_sharded(pl_module):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(pl_module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return None


#: The hook tables of a module that Lightning's ``remove_module_hooks`` empties.
HOOK_TABLES = ("_backward_hooks", "_forward_hooks", "_forward_pre_hooks", "_state_dict_hooks",
               "_load_state_dict_pre_hooks")


def _hooks_not_from_deepspeed(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str, dict[int, Any]]]:
    """``(module, table, {id: hook})`` of every hook that DeepSpeed did not register (by the hook's module)."""
    def owner(hook: Any) -> str:
        return str(getattr(getattr(hook, "func", hook), "__module__", "") or "")

    kept = []
    for module in model.modules():
        for attribute in HOOK_TABLES:
            hooks = {k: h for k, h in getattr(module, attribute, {}).items() if not owner(h).startswith("deepspeed")}
            if hooks:
                kept.append((module, attribute, hooks))
    return kept


def _all_gather_objects(value: Any) -> list[Any]:
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return [value]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, value)  # plain dicts of names, sizes and digests
    return out


