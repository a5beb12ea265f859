"""``StepCheckpoint``: the resume points of a run, written every N optimizer steps and at epoch end.

Best-k checkpoints stay with Lightning's ``ModelCheckpoint`` (``callbacks.checkpoint``); this
callback writes the checkpoints a run resumes from:

* ``last-step<global step>.ckpt`` every ``every_n_train_steps`` optimizer steps (never in the middle
  of gradient accumulation, never on an epoch's last batch: the epoch-end one follows; after the
  validation when one runs at that step, ``val_check_interval``) and after every epoch, once the
  epoch has ended for good (at the next epoch's start, or when training ends), so its validation,
  early-stopping, best-k and epoch-interval scheduler states are all inside;
* the newest ``keep_last`` of them are kept, an older one is deleted only after the new one is
  committed to disk (:class:`~mmtrain.engine.callbacks.checkpoint_io.AtomicCheckpointIO`);
* ``last.ckpt`` is a symlink to the newest of them;
* with ``keep_every_n_epochs: k``, the checkpoint after every k-th epoch is named
  ``epoch<e>-step<s>.ckpt`` and never rotated away.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn

log = logging.getLogger(__name__)

RESUME_PREFIXES = ("last-step", "epoch")
LAST_NAME = "last.ckpt"  # a symlink to the newest resume checkpoint


class StepCheckpoint(Checkpoint):
    """Resume checkpoints every ``every_n_train_steps`` steps and at each epoch end, rotated.

    Args:
        dirpath: checkpoint directory (``${run_dir}/checkpoints``).
        every_n_train_steps: optimizer steps between mid-epoch checkpoints (0: epoch ends only).
        keep_last: how many of the newest ``last-step*`` checkpoints to keep (>= 1).
        keep_every_n_epochs: also keep the checkpoint of every k-th epoch for good (None: none).
    """

    def __init__(self, *, dirpath: str, every_n_train_steps: int = 50, keep_last: int = 2,
                 keep_every_n_epochs: int | None = None) -> None:
        if keep_last < 1:
            raise ValueError(f"callbacks.resume_checkpoint.keep_last must be >= 1, got {keep_last}")
        if every_n_train_steps < 0:
            raise ValueError(f"callbacks.resume_checkpoint.every_n_train_steps must be >= 0, got {every_n_train_steps}")
        if keep_every_n_epochs is not None and keep_every_n_epochs < 1:
            raise ValueError(f"callbacks.resume_checkpoint.keep_every_n_epochs must be >= 1 or null, "
                             f"got {keep_every_n_epochs}")
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = int(every_n_train_steps)
        self.keep_last = int(keep_last)
        self.keep_every_n_epochs = keep_every_n_epochs
        self.rotating: list[str] = []  # names of the kept last-step checkpoints, oldest first
        self._saved_step = -1
        self._pending: str | None = None  # a mid-epoch checkpoint waiting for its step's validation
        self._finished_epoch = -1  # the last epoch whose end was written
        self._between_epochs = False  # saving in on_train_epoch_start

    def state_dict(self) -> dict[str, Any]:
        return {"rotating": list(self.rotating)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rotating = list(state_dict.get("rotating", []))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if (
            self.every_n_train_steps
            and step > 0
            and step % self.every_n_train_steps == 0
            and step != self._saved_step
            and (batch_idx + 1) % trainer.accumulate_grad_batches == 0
            and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        ):
            if validation_follows(trainer, batch_idx):
                # A checkpoint written now would resume *after* this batch but skip the validation
                # that follows it (Lightning does not re-run it): write it once that validation ends.
                self._pending = f"last-step{step:07d}.ckpt"
                return
            self._save(trainer, f"last-step{step:07d}.ckpt", rotate=True)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and not trainer.sanity_checking and trainer.state.fn == TrainerFn.FITTING:
            self._save(trainer, pending, rotate=True)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch > 0:
            self._between_epochs = True
            try:
                self._save_finished_epoch(trainer)
            finally:
                self._between_epochs = False

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if self._between_epochs:
            start_of_epoch(checkpoint.get("loops", {}).get("fit_loop", {}))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save_finished_epoch(trainer)

    def _save_finished_epoch(self, trainer: pl.Trainer) -> None:
        """The checkpoint of the epoch that just ended, written once it has ended for good: at the next
        epoch's start, or when training ends (max_epochs, max_steps, early stopping).

        Not in ``on_train_epoch_end``: a checkpoint written there resumes by running that epoch's
        ``on_train_epoch_end`` hooks a second time (Lightning cannot tell which ran), so early
        stopping counts the epoch twice and an epoch-interval LR scheduler step is lost.
        """
        epoch, step = trainer.current_epoch - 1, trainer.global_step
        if epoch < 0 or self._finished_epoch == epoch:
            return
        self._finished_epoch = epoch
        if self.keep_every_n_epochs and (epoch + 1) % self.keep_every_n_epochs == 0:
            self._save(trainer, f"epoch{epoch:03d}-step{step:07d}.ckpt", rotate=False)
        else:
            self._save(trainer, f"last-step{step:07d}.ckpt", rotate=True)

    def save_now(self, trainer: pl.Trainer, name: str) -> None:
        """Write a resume checkpoint now (e.g. on SIGTERM), as one of the rotated ``last`` ones."""
        self._save(trainer, name, rotate=True)

    def _save(self, trainer: pl.Trainer, name: str, *, rotate: bool) -> None:
        self._saved_step = trainer.global_step
        if rotate:
            self.rotating = [n for n in self.rotating if n != name] + [name]
        trainer.save_checkpoint(str(self.dirpath / name), weights_only=False)  # full state; atomic, the old ones go after
        if trainer.is_global_zero:
            point_last_at(self.dirpath, name)
        if rotate:
            while len(self.rotating) > self.keep_last:
                old = self.dirpath / self.rotating.pop(0)
                if trainer.is_global_zero and old.exists():
                    trainer.strategy.remove_checkpoint(str(old))


#: The fit loop's per-epoch progress that Lightning resets when an epoch's batches start (the
#: ``reset_on_run`` of ``_TrainingEpochLoop.reset``), as they appear in a checkpoint's ``loops``.
EPOCH_RUN_PROGRESS = ("epoch_loop.batch_progress", "epoch_loop.scheduler_progress",
                      "epoch_loop.automatic_optimization.optim_progress")


def start_of_epoch(fit_loop: dict[str, Any]) -> None:
    """Make a checkpoint written in ``on_train_epoch_start`` resume *into* that epoch.

    Lightning resets the epoch loop's ``current`` counters only after ``on_train_epoch_start``; a
    checkpoint written there still holds the previous epoch's (all batches done, last batch seen), and
    a resume would take the new epoch as finished. This applies the reset Lightning is about to do
    (``current`` counters to 0, ``is_last_batch`` False, the validation batch total to 0) to the saved
    copy only.
    """
    def zero(tree: Any, key: str = "") -> Any:
        if isinstance(tree, dict):
            return {k: zero(v, k) for k, v in tree.items()}
        return 0 if key in ("ready", "started", "processed", "completed") else tree

    for name in EPOCH_RUN_PROGRESS:
        state = fit_loop.get(name)
        if not isinstance(state, dict):
            continue
        if name.endswith("optim_progress"):
            for part in state.get("optimizer", {}).values():
                part["current"] = zero(part["current"])
        else:
            state["current"] = zero(state["current"])
            if "is_last_batch" in state:
                state["is_last_batch"] = False
    val = fit_loop.get("epoch_loop.val_loop.batch_progress")
    if isinstance(val, dict):
        val["total"] = zero(val["total"])


def validation_follows(trainer: pl.Trainer, batch_idx: int) -> bool:
    """Whether Lightning validates right after train batch ``batch_idx`` of this epoch (a
    ``val_check_interval`` point; the epoch's last batch is not asked about here)."""
    if not getattr(trainer, "enable_validation", False):
        return False
    batches = trainer.num_val_batches
    if not (sum(batches) if isinstance(batches, list) else batches):
        return False
    every_epochs = trainer.check_val_every_n_epoch
    if every_epochs is not None and (trainer.current_epoch + 1) % every_epochs:
        return False
    every = trainer.val_check_batch
    if every is None or every == float("inf"):
        return False
    position = batch_idx if every_epochs is not None else trainer.fit_loop.epoch_loop.total_batch_idx
    return (position + 1) % int(every) == 0


def point_last_at(directory: Path, name: str) -> None:
    """Make ``last.ckpt`` a relative symlink to ``name``, replaced atomically (never dangling mid-way)."""
    link, temporary = directory / LAST_NAME, directory / f".{LAST_NAME}.tmp"
    temporary.unlink(missing_ok=True)
    os.symlink(name, temporary)
    os.replace(temporary, link)


def is_resume_name(name: str) -> bool:
    """``last-step<N>.ckpt`` / ``epoch<e>-step<N>.ckpt``: the checkpoints a run resumes from."""
    return name.startswith(RESUME_PREFIXES) and re.search(r"step\d+\.ckpt$", name) is not None


def resume_point(run_dir: Path) -> Path | None:
    """The newest resume checkpoint of ``run_dir`` that verifies; damaged ones are reported and passed over.

    ``None`` when the run was stopped before its first checkpoint: it starts again from step 0 (and its
    checkpoints, e.g. a best one, are removed: they will be written again).

    Raises:
        FileNotFoundError: checkpoints exist but none is intact.
    """
    from mmtrain.engine.callbacks.checkpoint_manifest import find_resume_checkpoint, read_manifest

    checkpoint_dir = run_dir / "checkpoints"
    try:
        listed = [name for name in read_manifest(checkpoint_dir)["checkpoints"] if is_resume_name(name)]
    except FileNotFoundError:  # no checkpoint was ever written there, or the manifest was lost
        listed = rebuild_manifest(checkpoint_dir) if list(_checkpoint_files(checkpoint_dir)) else []
        listed = [name for name in listed if is_resume_name(name)]
    if not listed:
        log.warning("%s holds no resume checkpoint yet (stopped before the first one): training %s again "
                    "from the start", checkpoint_dir, run_dir)
        drop_checkpoints_after(checkpoint_dir, -1)
        return None
    return find_resume_checkpoint(checkpoint_dir, accept=is_resume_name)


def _checkpoint_files(checkpoint_dir: Path) -> list[Path]:
    """The checkpoint files of a folder (not ``last.ckpt``, a symlink; not temporaries)."""
    return sorted(p for p in checkpoint_dir.glob("*.ckpt") if p.is_file() and not p.is_symlink())


def rebuild_manifest(checkpoint_dir: Path) -> list[str]:
    """Write a new ``manifest.json`` for a checkpoint folder that lost it, listing the files that
    verify on their own: every zip record's CRC-32 matches (``zipfile.testzip``) and the file loads
    weights-only. Returns the names listed; each one left out is logged with the reason.

    Raises:
        FileNotFoundError: none verifies (named), or ``MMTRAIN_SIGNING_KEY`` is set (files that
            cannot be authenticated are not signed anew).
    """
    import zipfile

    from mmtrain.core.integrity import SIGNING_KEY_ENV, signing_key
    from mmtrain.engine.callbacks.checkpoint_io import MANIFEST_NAME, AtomicCheckpointIO, load_unlisted

    files = _checkpoint_files(checkpoint_dir)
    if signing_key() is not None:
        raise FileNotFoundError(
            f"{checkpoint_dir / MANIFEST_NAME} is missing and {SIGNING_KEY_ENV} is set: the "
            f"{len(files)} checkpoints there cannot be authenticated, so they are neither resumed from nor "
            "signed anew. Restore manifest.json, or start a new run without resume=."
        )
    kept: list[tuple[Path, dict[str, Any]]] = []
    for path in files:
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                raise ValueError(f"record {bad} fails its CRC-32 check")
            kept.append((path, load_unlisted(path)))
        except (zipfile.BadZipFile, ValueError, RuntimeError, OSError, EOFError) as err:
            log.warning("%s is not listed again: %s", path.name, err)
    if not kept:
        raise FileNotFoundError(
            f"{checkpoint_dir / MANIFEST_NAME} is missing and none of {[p.name for p in files]} verifies on its "
            "own (see the warnings); start the run again without resume=."
        )
    io = AtomicCheckpointIO(check_loadable=False)
    for path, state in sorted(kept, key=lambda item: int(item[1].get("global_step") or 0)):
        io.relist(path, state)
    names = [p.name for p, _ in kept]
    log.warning("%s was missing: rebuilt it from the checkpoints that verify on their own (zip CRC-32, "
                "weights-only load): %s", checkpoint_dir / MANIFEST_NAME, ", ".join(names))
    return names


def drop_checkpoints_after(checkpoint_dir: Path, step: int) -> None:
    """Remove this run's checkpoints written after global step ``step`` (manifest-listed files only):
    the resumed run writes them again, under the same names."""
    from mmtrain.engine.callbacks.checkpoint_io import AtomicCheckpointIO, read_manifest

    try:
        entries = read_manifest(checkpoint_dir)["checkpoints"]
    except FileNotFoundError:
        return
    io = AtomicCheckpointIO()
    for name, entry in entries.items():
        if int(entry.get("global_step") or 0) > step and (checkpoint_dir / name).exists():
            log.info("removing %s (written after the resume point)", name)
            io.remove_checkpoint(checkpoint_dir / name)
