"""``KillSwitch``: kill the training process at a chosen point, to prove a resume is exact.

Add it to a run to rehearse a crash where it hurts most::

    mmtrain train ... +callbacks.kill._target_=mmtrain.engine.callbacks.faults.KillSwitch \\
        +callbacks.kill.at_step=17 +callbacks.kill.hook=train_batch_end

then resume with the same command plus ``resume=<run dir>`` (and without the switch).
``scripts/kill_resume_trials.py`` does this N times at random points.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from mmtrain.engine.callbacks.checkpoint_io import load_verified
from mmtrain.engine.callbacks.resume import STEPS_NAME as STEPS_FILE

HOOKS = ("train_batch_start", "train_batch_end", "validation_batch", "train_epoch_end", "shards_written")


class KillSwitch(pl.Callback):
    """Sends ``signal`` (SIGKILL by default: no cleanup, no checkpoint) to this process.

    Args:
        at_step: the global step (optimizer steps done) at which to fire.
        hook: where: before or after a train batch, during a validation batch, at epoch end, or inside a sharded
            checkpoint's write (``shards_written``: every rank's shards on disk, the folder not yet committed;
            trainer=fsdp2_sharded).
        signal: ``KILL``, ``TERM`` or ``INT`` (Ctrl-C).
        rank: only this global rank fires (the others are killed by the launcher or hang up).
        times: how many signals to send at once (``INT`` twice: a second Ctrl-C).
    """

    def __init__(self, *, at_step: int, hook: str = "train_batch_end", signal: str = "KILL", rank: int = 0,
                 times: int = 1) -> None:
        if hook not in HOOKS:
            raise ValueError(f"callbacks.kill.hook must be one of {HOOKS}, got {hook!r}")
        if signal not in ("KILL", "TERM", "INT"):
            raise ValueError(f"callbacks.kill.signal must be KILL, TERM or INT, got {signal!r}")
        self.at_step = int(at_step)
        self.hook = hook
        self.signal = signal
        self.rank = int(rank)
        self.times = int(times)
        self.fired = False  # once per process: a validation pass has many batches at one step

    def _fire(self, trainer: pl.Trainer, hook: str) -> None:
        if (hook == self.hook and trainer.global_step == self.at_step and trainer.global_rank == self.rank
                and not self.fired):
            self.fired = True
            for _ in range(self.times):
                os.kill(os.getpid(), getattr(signal, f"SIG{self.signal}"))

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.hook != "shards_written":
            return
        hooks = getattr(trainer.strategy, "shards_written_hooks", None)
        if hooks is None or not getattr(trainer.strategy, "sharded_checkpoints", False):
            raise ValueError("callbacks.kill.hook=shards_written needs sharded checkpoints (trainer=fsdp2_sharded).")
        hooks.append(lambda: self._fire(trainer, "shards_written"))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._fire(trainer, "train_batch_start")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._fire(trainer, "train_batch_end")

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self._fire(trainer, "validation_batch")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fire(trainer, "train_epoch_end")


def final_checkpoint(run_dir: Path) -> Path:
    """The run's newest intact resume checkpoint (its final state once the run has finished)."""
    from mmtrain.engine.callbacks.checkpoint_manifest import find_resume_checkpoint
    from mmtrain.engine.callbacks.checkpointing import is_resume_name

    return find_resume_checkpoint(Path(run_dir) / "checkpoints", accept=is_resume_name)


def _tensor_tree_diffs(a: Any, b: Any, where: str) -> list[str]:
    """Paths where two nested dict/list/tensor trees differ (tensors compared with ``torch.equal``)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b), key=str)
        return [d for k in keys for d in _tensor_tree_diffs(a.get(k), b.get(k), f"{where}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _tensor_tree_diffs(x, y, f"{where}[{i}]")]
    return [] if a == b else [where]


def compare_runs(reference: Path, other: Path) -> list[str]:
    """What differs between two finished runs of the same command: final weights, optimizer and
    scheduler state, early-stopping state, best score, per-step losses, exported weights. ``[]``
    means bit-identical."""
    reference, other = Path(reference), Path(other)
    first, second = (load_verified(final_checkpoint(r)) for r in (reference, other))
    diffs = [d for key in ("state_dict", "optimizer_states", "lr_schedulers", "global_step", "epoch")
             for d in _tensor_tree_diffs(first.get(key), second.get(key), key)]
    for name, state in first.get("callbacks", {}).items():
        if name.startswith(("EarlyStopping", "ModelCheckpoint")):
            # paths name the run; current_score is scratch that Lightning does not restore
            keep = {k: v for k, v in state.items()
                    if "path" not in k and k not in ("dirpath", "best_k_models", "current_score")}
            theirs = {k: v for k, v in second.get("callbacks", {}).get(name, {}).items() if k in keep}
            diffs += _tensor_tree_diffs(keep, theirs, f"callbacks.{name}")
    steps = [(r / STEPS_FILE).read_text() if (r / STEPS_FILE).exists() else None for r in (reference, other)]
    if steps[0] != steps[1]:
        diffs.append(STEPS_FILE)
    summaries = [json.loads((r / "metrics.json").read_text()) if (r / "metrics.json").exists() else {}
                 for r in (reference, other)]
    for summary in summaries:  # what names the run or times it, not what it computed
        for key in ("run_dir", "best_checkpoint", "fit_seconds", "resumed_from"):
            summary.pop(key, None)
    diffs += [f"metrics.json:{key}" for key in sorted(set(summaries[0]) | set(summaries[1]))
              if summaries[0].get(key) != summaries[1].get(key)]
    exports = [r / "export" / "model.safetensors" for r in (reference, other)]
    if all(p.exists() for p in exports) and not _same_safetensors(*exports):
        diffs.append("export/model.safetensors")
    return diffs


def _same_safetensors(first: Path, second: Path) -> bool:
    """The same tensors (names, dtypes, bits) and metadata; not the bytes: safetensors writes the metadata from a
    hash map, whose key order changes from one process to the next."""
    from safetensors import safe_open

    with safe_open(str(first), "pt") as a, safe_open(str(second), "pt") as b:
        if a.metadata() != b.metadata() or sorted(a.keys()) != sorted(b.keys()):
            return False
        return all(_bits_equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())


def _bits_equal(a: Any, b: Any) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bool((a.contiguous().view(-1).view(torch.uint8)
                                                                == b.contiguous().view(-1).view(torch.uint8)).all())


def kill_overrides(step: int, hook: str = "train_batch_end", signal_name: str = "KILL", times: int = 1) -> list[str]:
    """Command-line overrides that add a :class:`KillSwitch` to a run."""
    return ["+callbacks.kill._target_=mmtrain.engine.callbacks.faults.KillSwitch", f"+callbacks.kill.at_step={step}",
            f"+callbacks.kill.hook={hook}", f"+callbacks.kill.signal={signal_name}", f"+callbacks.kill.times={times}"]
