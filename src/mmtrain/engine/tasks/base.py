"""Shared LightningModule base: optimizer and scheduler from config, one step for every split."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.precision import Precision
from torch import nn
from torch.optim import Optimizer

from mmtrain.config.validate import injects
from mmtrain.engine.nonfinite import NonFiniteGuard, StepPlace
from mmtrain.engine.quantized import load_trained_state, without_quantized_base
from mmtrain.engine.tasks.sources import ValSources
from mmtrain.models.processing import model_inputs

log = logging.getLogger(__name__)

OptimizerFactory = Callable[..., Optimizer]
SchedulerFactory = Callable[..., Any]


@injects(own=["model", "label_names", "prompt"])  # mmtrain.engine.build.build_task passes them
class TaskBase(ValSources, pl.LightningModule):
    """Holds the model and builds the optimizer (``_partial_`` factory) over trainable parameters.

    Args:
        model: the ``nn.Module`` being trained.
        optimizer: ``functools.partial`` of an optimizer class, called with the parameters.
        scheduler: optional ``partial`` called as ``scheduler(optimizer, total_steps=...)``;
            stepped every optimizer step.
        param_groups: optimizer settings per part of the model, keyed by module path
            (``head``, ``fusion``, ``encoders.image``...), e.g. ``{head: {lr: 1e-3}}``; each
            trainable parameter joins the group of the longest path it lies under, the rest keep
            the optimizer's own settings; a ``null`` entry is no group.
        nonfinite: what a training step with a NaN/Inf loss or gradient does (checked before
            gradient clipping, over the whole accumulation window): ``abort`` raises
            :class:`~mmtrain.engine.nonfinite.NonFiniteLossError` naming the step and the sample
            ids, with no update applied; ``skip`` leaves weights and optimizer state unchanged,
            logs a warning and ``train/nonfinite_skipped`` and lists the step in
            :attr:`nonfinite_skips`. A skipped step still counts in ``trainer.global_step`` and the
            LR scheduler still advances (both count batches consumed, not updates applied).
    """

    #: The headline metric of ``results`` (``metrics.json``'s ``primary_metric``, the report's verdict).
    primary_metric: ClassVar[str] = "loss"
    #: Whether larger values of :attr:`primary_metric` are better.
    higher_is_better: ClassVar[bool] = False
    #: The validation metric the best checkpoint and early stopping follow when the config says
    #: ``monitor: auto`` (the default); ``None``: :attr:`primary_metric`. Its sense is :attr:`higher_is_better`.
    monitor_metric: ClassVar[str | None] = None
    #: Test metrics ``evaluate_unimodal`` reports with one modality at a time (the task honours
    #: ``only_modality``); empty: the task does not support it.
    only_modality_metrics: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        param_groups: dict[str, dict[str, float]] | None = None,
        nonfinite: str = "abort",
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # a null entry removes a group an experiment it builds on set (task.param_groups.head=null)
        self.param_groups = {str(k): dict(v) for k, v in (param_groups or {}).items() if v is not None}
        self.nonfinite_guard = NonFiniteGuard(nonfinite)  # raises ValueError on an unknown policy
        self.sample_rows: torch.Tensor | None = None  # per-sample outputs of the last train step (step() sets)
        #: Metrics of the last finished epoch per split (``val``, ``test``...), as ``metrics.json`` holds them.
        self.results: dict[str, dict[str, Any]] = {}
        #: When set, every other modality is marked absent (unimodal evaluation of a fused model).
        self.only_modality: str | None = None

    @property
    def nonfinite(self) -> str:
        """The NaN/Inf policy, ``abort`` or ``skip``."""
        return self.nonfinite_guard.policy

    @property
    def nonfinite_skips(self) -> list[dict[str, Any]]:
        """Skipped steps so far: ``{step, epoch, batch_idx, reason, ids}`` each (kept in checkpoints)."""
        return self.nonfinite_guard.skips

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters split by ``param_groups`` (default group first, empty ones dropped).

        Raises:
            ValueError: every parameter is frozen, or a group path matches no trainable parameter.
        """
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("every model parameter is frozen (model.trainable); nothing to train.")
        # a kind may name its parts (a whole VLM's projector, language_model...): those names stand for their paths
        aliases = self.model.part_paths() if hasattr(self.model, "part_paths") else {}
        settings = {aliases.get(path, path): values for path, values in self.param_groups.items()}
        paths = sorted(settings, key=len, reverse=True)
        members: dict[str | None, list[nn.Parameter]] = {None: [], **{path: [] for path in paths}}
        for name, param in named:
            path = next((p for p in paths if name == p or name.startswith(p + ".")), None)
            members[path].append(param)
        empty = [path for path in paths if not members[path]]
        if empty:
            tops = sorted({n.split(".")[0] for n, _ in named})
            raise ValueError(
                f"task.param_groups: {empty} match no trainable parameter of the model "
                f"(paths are module names such as {tops} or 'encoders.<slot>')."
            )
        groups = [{"params": members[None]}] if members[None] else []
        groups += [{"params": members[p], **settings[p]} for p in settings]
        return groups

    def configure_model(self) -> None:
        """Under Lightning's ``ModelParallelStrategy`` (``trainer=fsdp2``): shard the model with FSDP2 over the
        data-parallel ranks (:mod:`mmtrain.engine.sharding`); nothing under any other strategy."""
        from lightning.pytorch.strategies import ModelParallelStrategy

        if self._trainer is None or not isinstance(self.trainer.strategy, ModelParallelStrategy):
            return
        if getattr(self, "_sharded", False):
            return
        from mmtrain.engine.sharding import fsdp2_precision_policy, shard_model

        mesh = self.device_mesh["data_parallel"]
        shard_model(self.model, mesh, mixed_precision=fsdp2_precision_policy(str(self.trainer.precision)))
        self._sharded = True

    def on_validation_end(self) -> None:
        """Under FSDP2, split the root unit's parameters again: an evaluation forward leaves them gathered (a
        training forward's backward splits them), and whoever reads the weights next (the gradient audit, a
        checkpoint) should meet the same shards as after a training step."""
        from mmtrain.engine.sharding import reshard_root

        reshard_root(self.model)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.optimizer_groups())
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_start(self) -> None:
        frozen = sorted(getattr(self.model, "frozen", ()))
        if frozen:
            log.info("frozen (no gradients, kept in eval mode): %s", ", ".join(frozen))

    def on_train_epoch_start(self) -> None:
        self.nonfinite_guard.reset()
        datamodule = getattr(self.trainer, "datamodule", None)
        if callable(getattr(datamodule, "set_epoch", None)):
            datamodule.set_epoch(self.current_epoch)

    def step(self, batch: dict[str, Any], split: str) -> torch.Tensor | None:
        """Loss of one batch for ``split`` (``train``/``val``/``test``); subclasses implement it."""
        raise NotImplementedError

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        """The batch's loss; for a batch whose samples were all skipped (undecodable media, no ids):

        * one process: ``None``, so Lightning runs no backward and the optimizer changes nothing
          (every gradient is ``None``; Adam moments and weight decay are left alone);
        * under DDP (``world_size > 1``): a zero loss that touches every trainable parameter, see
          :meth:`empty_batch_loss`. The rank joins the gradient all-reduce, so the other ranks do not
          wait for it forever; it contributes zero gradients to the average, and the optimizer steps
          on every rank as usual (with the other ranks' samples; if every rank's batch was empty the
          gradients are all zero, and Adam-style moments still decay and weight decay still applies).
        """
        if not batch["ids"]:
            trainer = self._trainer
            if trainer is None or int(trainer.world_size) <= 1:
                return None
            loss = self.empty_batch_loss()
            self.nonfinite_guard.record([], loss)
            return loss
        loss = self.step(batch, "train")
        rows, self.sample_rows = self.sample_rows, None  # not kept past this step (nor its graph)
        self.nonfinite_guard.record(batch["ids"], loss, rows)  # rows: to name NaN/Inf samples
        return loss

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Callable[[], Any] | None = None
    ) -> None:
        """Runs the closure, checks loss and gradients (before clipping), then steps, skips or aborts.

        Lightning calls this once per accumulation window; clipping, the precision plugin and the
        ``on_before_optimizer_step`` hooks run inside ``optimizer.step`` as usual, and not at all for a
        skipped step. With fp16 AMP (a GradScaler) only the loss is checked: the scaler already skips
        steps whose gradients overflow.
        """
        if optimizer_closure is None:
            optimizer.step()
            return
        self.nonfinite_guard.step(
            optimizer, optimizer_closure, StepPlace(self.trainer.global_step, epoch, batch_idx),
            names=lambda: {id(p): n for n, p in self.named_parameters()},
            check_grads=getattr(self.trainer.precision_plugin, "scaler", None) is None,
            device=self.device, announce=self.trainer.is_global_zero,
        )
        if self.nonfinite == "skip":  # every step, so a zero is visible too
            self.log("train/nonfinite_skipped", float(len(self.nonfinite_skips)), on_step=True, on_epoch=False,
                     batch_size=1)

    def configure_gradient_clipping(self, optimizer: Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Lightning's clipping, except that clipping by norm reuses the total gradient norm the NaN/Inf
        guard computed moments before (same tensors, same order, unchanged: bit-identical result, one
        pass over the gradients instead of two, none when the norm is within the limit). Any other case
        goes to Lightning as usual.

        Lightning passes ``trainer.gradient_clip_val`` / ``gradient_clip_algorithm`` (``None``: norm).
        """
        total = self.nonfinite_guard.total_grad_norm(optimizer)
        if (total is not None and (gradient_clip_val or 0) > 0 and (gradient_clip_algorithm or "norm") == "norm"
                and type(self.trainer.precision_plugin) is Precision):
            # clip_grads_with_norm_'s own coefficient; on the CPU, where reading it costs no device sync,
            # a coefficient of exactly 1.0 skips the pass that would multiply every gradient by 1.0
            coefficient = torch.clamp(float(gradient_clip_val) / (total + 1e-6), max=1.0)
            if total.device.type == "cpu" and bool(coefficient == 1.0):
                return
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grads_with_norm_(params, float(gradient_clip_val), total)  # type: ignore[arg-type]
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["nonfinite_skips"] = [dict(s) for s in self.nonfinite_skips]
        # QLoRA: the frozen quantized LM layers come from the pretrained folder, not the checkpoint
        if "state_dict" in checkpoint:
            checkpoint["state_dict"] = without_quantized_base(checkpoint["state_dict"], self)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """As ``nn.Module.load_state_dict``; a checkpoint may lack the frozen quantized layers (QLoRA)."""
        if assign:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        return load_trained_state(self, state_dict, strict, load=super().load_state_dict)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.nonfinite_guard.skips = [dict(s) for s in checkpoint.get("nonfinite_skips", [])]

    def empty_batch_loss(self) -> torch.Tensor:
        """``0 * sum(p)`` over every trainable parameter: a zero loss whose backward gives every
        parameter a zero gradient, so DDP's reducer all-reduces every bucket, as for a real batch."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return torch.zeros((), device=self.device, requires_grad=True)
        return torch.stack([p.sum().float() for p in params]).sum() * 0.0

    def log_batch_value(self, name: str, value: torch.Tensor, *, batch_size: int, on_step: bool = False,
                        prog_bar: bool = False) -> None:
        """Log a value of this rank's batch (a loss), averaged over the epoch. Under DDP/FSDP every rank holds
        another part of the split, so Lightning all-reduces the value (``sync_dist``): the epoch's mean over
        every sample, not rank 0's share (and, with ``on_step``, each step's mean over the global batch)."""
        self.log(name, value, batch_size=batch_size, on_step=on_step, on_epoch=True, prog_bar=prog_bar,
                 sync_dist=True)

    def log_split_results(self, split: str, results: dict[str, Any], prog_bar: tuple[str, ...] = ()) -> None:
        """Log a split's scalar results, which every rank already holds in full (torchmetrics' ``compute()``
        syncs its states; retrieval and generation metrics come from gathered rows). ``sync_dist`` averages
        the equal values of the ranks (the same number again) and tells Lightning they are global, so it
        does not warn; they are reduced where Lightning settles the epoch, on every rank. Non-numbers are skipped."""
        for key, value in results.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = float(value)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.log(f"{split}/{key}", float(value), prog_bar=key in prog_bar, sync_dist=True)

    def _finish(self, split: str) -> None:
        """Compute ``split``'s epoch metrics into ``results[split]`` and log them (subclasses implement it)."""
        raise NotImplementedError

    def _discard(self, split: str) -> None:
        """Drop what ``split`` accumulated without making results (the sanity check's val batches): by
        default ``metrics["<split>_metrics"].compute()``, which resets it."""
        metrics = getattr(self, "metrics", None)
        if isinstance(metrics, nn.ModuleDict) and f"{split}_metrics" in metrics:
            metrics[f"{split}_metrics"].compute()

    def on_validation_epoch_end(self) -> None:
        if self.val_splits:  # named val sources: per source, then their mean
            self.finish_sources(self.trainer.sanity_checking)
        elif self.trainer.sanity_checking:
            self._discard("val")
        else:
            self._finish("val")

    def on_test_epoch_end(self) -> None:
        self._finish("test")

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor | None:
        return self.step(batch, self.split_of(dataloader_idx)) if batch["ids"] else None

    def log(self, *args: Any, add_dataloader_idx: bool = False, **kwargs: Any) -> None:
        """``LightningModule.log``; names are never suffixed with a DataLoader index (each named val source logs
        under its own ``val/<source>/`` names)."""
        super().log(*args, add_dataloader_idx=add_dataloader_idx, **kwargs)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        return self.step(batch, "test") if batch["ids"] else None

    @classmethod
    def monitored(cls) -> tuple[str, str]:
        """``(monitor, mode)`` for Lightning's ``ModelCheckpoint`` / ``EarlyStopping``: ``val/<metric>``,
        ``max`` or ``min``."""
        return f"val/{cls.monitor_metric or cls.primary_metric}", "max" if cls.higher_is_better else "min"

    def model_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The entries of ``batch`` the model takes, without ``labels``; with :attr:`only_modality` set,
        every other modality is marked absent (unimodal evaluation of a fused model)."""
        inputs = model_inputs(batch)
        inputs.pop("labels", None)
        if self.only_modality is not None:
            for key in [k for k in inputs if k.endswith("_present")]:
                if key != f"{self.only_modality}_present":
                    inputs[key] = torch.zeros_like(inputs[key])
        return inputs

    def batch_size_of(self, batch: dict[str, Any]) -> int:
        return len(batch["ids"])
