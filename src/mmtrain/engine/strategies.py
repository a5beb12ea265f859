"""Lightning's strategies with mmtrain's checkpoint manifest: every checkpoint a strategy writes, a single file or
a sharded folder, is listed (sha256 + size of every file), verified before it is read and rotated the same way.

``ModelParallelStrategy`` (FSDP2, ``trainer=fsdp2``): with ``save_distributed_checkpoint: false`` (the default
preset) rank 0 writes one full state through ``CheckpointIO`` as every other strategy does; with ``true``
(``trainer=fsdp2_sharded``) each rank writes its shards into a folder that :mod:`mmtrain.engine.sharded_checkpoints`
commits to the manifest. Lightning's own class writes that folder past ``CheckpointIO``: no manifest would list it,
``resume=`` would not find it, rotation would never remove it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from mmtrain.core.fileio import OWNER


class ManifestModelParallelStrategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` whose sharded checkpoints go through the manifest (see the module).

    Attributes:
        shards_written_hooks: called on every rank once its shards are written and before the folder is
            committed (fault rehearsal: :class:`~mmtrain.engine.callbacks.faults.KillSwitch`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shards_written_hooks: list[Callable[[], None]] = []

    @property
    def sharded_checkpoints(self) -> bool:
        """Whether checkpoints are sharded folders (``save_distributed_checkpoint``)."""
        return bool(self._save_distributed_checkpoint)

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options")
        from lightning.fabric.strategies.fsdp import _distributed_checkpoint_save

        from mmtrain.engine.sharded_checkpoints import META_NAME, own_files

        path = Path(self.broadcast(str(Path(filepath).absolute())))
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(self.broadcast(_temporary_folder(path) if self.is_global_zero else None))
        state = {"state_dict": checkpoint.pop("state_dict"),
                 **{f"optimizer_{i}": s for i, s in enumerate(checkpoint.pop("optimizer_states", []))}}
        _distributed_checkpoint_save(state, folder)  # a collective: every rank writes __<rank>_0.distcp
        if self.is_global_zero:
            torch.save(checkpoint, folder / META_NAME)
        files = own_files(folder, self.global_rank)
        listing: dict[str, dict[str, Any]] = {}
        for part in self._all_gather_objects(files):
            listing.update(part)
        for hook in self.shards_written_hooks:
            hook()
        if self.is_global_zero:
            missing = sorted(p.name for p in folder.iterdir() if p.name not in listing)
            if missing:
                raise RuntimeError(f"sharded checkpoint {path}: files no rank claims as its own: {missing}")
            self.checkpoint_io.commit_folder(folder, path, listing, checkpoint)
        self.barrier("mmtrain sharded checkpoint committed")

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Verify the checkpoint (file or folder) against its manifest, then Lightning's load (a folder: every
        rank reads its shards; a file: the full state, cut into each rank's shards)."""
        from mmtrain.engine.callbacks.checkpoint_io import verify_checkpoint

        path = Path(self.broadcast(str(checkpoint_path)))
        verify_checkpoint(path)
        return super().load_checkpoint(path, weights_only=weights_only)

    def _all_gather_objects(self, value: Any) -> list[Any]:
        if not torch.distributed.is_available() or not torch.distributed.is_initialized():
            return [value]
        out: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(out, value)  # plain dicts of names, sizes and digests
        return out


def _temporary_folder(path: Path) -> str:
    """A new folder beside ``path`` named like mmtrain's temporary files (cleared once its writer is gone)."""
    folder = tempfile.mkdtemp(prefix=f".{path.name}.{OWNER.format(pid=os.getpid())}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)  # what mkdir would give (mkdtemp's 0700 would hide it from the user's group)
    return folder
