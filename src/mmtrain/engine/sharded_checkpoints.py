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
import re
from pathlib import Path
from typing import Any

import torch

#: Lightning's file of a sharded checkpoint's non-tensor state (loops, callbacks, global step...).
META_NAME = "meta.pt"
DCP_METADATA = ".metadata"
_RANK_FILE = re.compile(r"__(\d+)_\d+\.distcp$")


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


def own_files(folder: Path, rank: int) -> dict[str, dict[str, Any]]:
    """The files of ``folder`` this rank wrote (DCP names them ``__<rank>_<n>.distcp``; rank 0 also writes the
    metadata files), hashed: name -> sha256 + bytes."""
    mine = {}
    for path in sorted(folder.iterdir()):
        match = _RANK_FILE.search(path.name)
        if (int(match.group(1)) == rank) if match else rank == 0:
            mine[path.name] = hash_file(path)
    return mine


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
    present = sorted(p.name for p in path.iterdir())
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
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)):
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


def load_folder(path: Path) -> dict[str, Any]:
    """One full checkpoint dict (``state_dict``, ``optimizer_states``, loops, callbacks...) from a verified
    sharded checkpoint folder, consolidated in this process (the whole state must fit in CPU memory)."""
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
