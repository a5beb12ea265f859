"""Sharded (torch distributed checkpoint, DCP) checkpoints as resume points like any other.

Under ``trainer=fsdp2_sharded`` every rank writes its own shard of the weights and optimizer state into one
folder per checkpoint (``__<rank>_0.distcp``; rank 0 adds DCP's ``.metadata`` and Lightning's ``meta.pt`` with
the loops' and callbacks' state): no rank ever holds the whole model. The folder goes through the same
manifest as a single file (:mod:`mmtrain.engine.callbacks.checkpoint_io`):

* written under a temporary name beside its final one; each rank hashes (sha256) and fsyncs the files it
  wrote, rank 0 gathers the list, records it ``pending``, renames the folder into place and commits the
  record: a folder is a checkpoint only once its manifest entry is committed;
* verified before anything in it is read (every listed file's size and sha256, no file more or less), and
  DCP's pickled ``.metadata`` is first read by an unpickler that admits only DCP's own metadata classes;
* rotated (``keep_last``, best, ``keep_every_n_epochs``) and removed like a file;
* consolidated into one full state for export and evaluation (``mmtrain export <folder>``, the best
  weights at fit end) with Lightning's DCP reader, no process group needed.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import torch

#: Lightning's file of a sharded checkpoint's non-tensor state (loops, callbacks, global step...).
META_NAME = "meta.pt"
DCP_METADATA = ".metadata"


def is_sharded_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a sharded checkpoint folder (not a single file)."""
    return Path(path).is_dir()


def hash_file(path: Path) -> dict[str, Any]:
    """``{"sha256", "bytes"}`` of ``path``, after making it durable (fsync)."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
        os.fsync(handle.fileno())
    return {"sha256": digest.hexdigest(), "bytes": size}


def folder_files(folder: Path) -> list[str]:
    """Every file under ``folder``, as sorted paths relative to it (DeepSpeed writes a ``checkpoint/`` subfolder)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def hash_files(folder: Path) -> dict[str, dict[str, Any]]:
    """name -> sha256 + bytes of every file under ``folder`` (one process hashing all of them)."""
    return {name: hash_file(folder / name) for name in folder_files(folder)}


def folder_record(files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The manifest content of a checkpoint folder: its files, their total size, and one sha256 over the list."""
    listing = "\n".join(f"{name} {entry['sha256']} {entry['bytes']}" for name, entry in sorted(files.items()))
    return {"files": {n: dict(e) for n, e in sorted(files.items())}, "bytes": sum(e["bytes"] for e in files.values()),
            "sha256": hashlib.sha256(listing.encode()).hexdigest()}


def verify_folder(path: Path, entry: dict[str, Any] | None) -> dict[str, Any]:
    """The manifest record ``path`` matches (every file's size and sha256, no file more or less, DCP's metadata
    admissible), else :class:`~mmtrain.engine.callbacks.checkpoint_io.CheckpointCorrupt` naming the file."""
    from mmtrain.engine.callbacks.checkpoint_io import MANIFEST_NAME, CheckpointCorrupt

    if entry is None:
        raise CheckpointCorrupt(path, f"missing from {path.parent / MANIFEST_NAME}")
    if entry.get("deleting"):
        raise CheckpointCorrupt(path, "marked for deletion by an interrupted removal")
    records = [r for r in (entry if "sha256" in entry else None, entry.get("pending")) if r and "files" in r]
    if not records:
        raise CheckpointCorrupt(path, "its manifest entry lists no files (not a sharded checkpoint)")
    present = folder_files(path)
    problems: list[str] = []
    for record in records:
        expected = record["files"]
        problems = [f"{name}: missing" for name in expected if name not in present]
        problems += [f"{name}: not listed" for name in present if name not in expected]
        problems += [f"{name}: {size} bytes, listed {expected[name]['bytes']}" for name in present
                     if name in expected and (size := (path / name).stat().st_size) != expected[name]["bytes"]]
        if not problems:
            problems = [f"{name}: checksum mismatch" for name in present
                        if hash_file(path / name)["sha256"] != expected[name]["sha256"]]
        if not problems:
            if is_deepspeed_folder(path):
                check_deepspeed_files(path)
            else:
                check_dcp_metadata(path / DCP_METADATA)
            return record
    raise CheckpointCorrupt(path, "; ".join(problems[:5]))


#: What DCP's pickled ``.metadata`` may name: its own metadata classes, paths, shapes, dtypes and layouts.
_ALLOWED = {
    "torch.distributed.checkpoint.metadata": None,  # any class of DCP's metadata module
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.distributed.checkpoint.planner": {"LoadItemType", "WriteItemType"},
    "pathlib": {"PosixPath", "PurePosixPath", "Path"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "collections": {"OrderedDict"},
    "builtins": {"set", "frozenset", "slice"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED.get(module, set())
        if module in _ALLOWED and (allowed is None or name in allowed):
            return super().find_class(module, name)
        kinds = (torch.dtype, torch.layout, torch.memory_format)
        if module == "torch" and isinstance(getattr(torch, name, None), kinds):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")


def check_dcp_metadata(path: Path) -> None:
    """Read DCP's ``.metadata`` (plain pickle, which DCP loads as is) with an unpickler that admits only DCP's
    metadata classes: anything else refuses the checkpoint before DCP unpickles it.

    Raises:
        UnsafeCheckpoint: the file names another class (nothing in it was executed).
    """
    from mmtrain.engine.callbacks.checkpoint_io import UnsafeCheckpoint

    try:
        with open(path, "rb") as handle:
            _MetadataUnpickler(handle).load()
    except FileNotFoundError:
        raise UnsafeCheckpoint(f"{path.parent} has no {DCP_METADATA}: not a torch distributed checkpoint") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as err:
        raise UnsafeCheckpoint(f"{path} is refused: {err}; it was not loaded and nothing in it was executed") from err


#: DeepSpeed's own classes in its checkpoint files (ZeRO optimizer state), admitted by the weights-only check.
DEEPSPEED_GLOBALS = ("deepspeed.runtime.fp16.loss_scaler.LossScaler",
                     "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
                     "deepspeed.runtime.zero.config.ZeroStageEnum", "deepspeed.utils.tensor_fragment.fragment_address")
#: DeepSpeed's entries of its model-state file, next to Lightning's own (loops, callbacks...).
DEEPSPEED_KEYS = ("module", "optimizer", "lr_scheduler", "csr_tensor_module_names", "skipped_steps", "global_steps",
                  "dp_world_size", "mp_world_size", "buffer_names", "param_shapes", "frozen_param_shapes",
                  "shared_params", "frozen_param_fragments", "ds_config", "ds_version")
DEEPSPEED_TAG = "checkpoint"  # Lightning's tag: the subfolder of a DeepSpeed checkpoint


def is_deepspeed_folder(path: Path) -> bool:
    """A DeepSpeed checkpoint folder (Lightning's tag subfolder), not a DCP one."""
    return (path / DEEPSPEED_TAG).is_dir() and not (path / DCP_METADATA).exists()


def _deepspeed_globals() -> list[Any]:
    import importlib

    return [getattr(importlib.import_module(module), attribute)
            for module, _, attribute in (name.rpartition(".") for name in DEEPSPEED_GLOBALS)]


def check_deepspeed_files(path: Path, names: list[str] | None = None) -> None:
    """Every ``.pt`` file of a DeepSpeed checkpoint folder loads with ``torch.load(weights_only=True)`` admitting
    only DeepSpeed's few state classes (DeepSpeed itself then loads them with full pickle).

    Raises:
        UnsafeCheckpoint: a file names anything else (nothing in it was executed).
    """
    from mmtrain.engine.callbacks.checkpoint_io import _weights_only_load

    with torch.serialization.safe_globals(_deepspeed_globals()):
        for file in sorted((path / DEEPSPEED_TAG).glob("*.pt")):
            _weights_only_load(str(file), f"{file} holds objects beyond DeepSpeed's checkpoint state; it was not "
                               "loaded and nothing in it was executed", "cpu", mmap=True)


def load_folder(path: Path) -> dict[str, Any]:
    """One full checkpoint dict (``state_dict``, ``optimizer_states``, loops, callbacks...) from a verified
    sharded checkpoint folder (DCP or DeepSpeed), consolidated in this process (the whole state must fit in CPU
    memory). A DeepSpeed folder gives the fp32 weights (DeepSpeed's ``zero_to_fp32``) and no optimizer state."""
    if is_deepspeed_folder(path):
        return _load_deepspeed_folder(path)
    from lightning.fabric.utilities.load import _load_distributed_checkpoint

    from mmtrain.engine.callbacks.checkpoint_io import _weights_only_load

    state = _load_distributed_checkpoint(path)
    meta = _weights_only_load(str(path / META_NAME), f"{path / META_NAME} holds objects that "
                              "torch.load(weights_only=True) refuses", "cpu")
    optimizers = [state.pop(f"optimizer_{i}") for i in range(len(state)) if f"optimizer_{i}" in state]
    return {**meta, **state, "optimizer_states": optimizers}


def load_sharded_weights(module: torch.nn.Module, path: Path) -> None:
    """Load the weights of a verified sharded checkpoint into the FSDP2-sharded ``module`` (every rank reads its
    own shards; a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    state = {"state_dict": get_model_state_dict(module)}
    dcp.load(state, checkpoint_id=path)
    set_model_state_dict(module, state["state_dict"])


def _load_deepspeed_folder(path: Path) -> dict[str, Any]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from mmtrain.engine.callbacks.checkpoint_io import _weights_only_load

    weights = get_fp32_state_dict_from_zero_checkpoint(str(path), tag=DEEPSPEED_TAG)
    with torch.serialization.safe_globals(_deepspeed_globals()):
        # rank 0's model-state file: mp_rank_00_model_states.pt (ZeRO 1-2), zero_pp_rank_0_mp_rank_00_... (ZeRO-3)
        first = sorted((path / DEEPSPEED_TAG).glob("*model_states.pt"))[0]
        client = _weights_only_load(str(first), f"{first} holds objects beyond DeepSpeed's checkpoint state", "cpu")
    return {**{k: v for k, v in client.items() if k not in DEEPSPEED_KEYS}, "state_dict": dict(weights),
            "optimizer_states": []}
