"""The ranks of one job agree on where it writes: one run directory, checked once the processes meet."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch.distributed as dist


class SameRunDir(pl.Callback):
    """At setup, every rank's run directory is gathered; ranks that disagree (each node given another
    ``run_dir``, or none and a timestamp of its own) stop before training, all of them, with the list."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = str(Path(run_dir).resolve())

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
            return
        seen: list[str | None] = [None] * trainer.world_size
        dist.all_gather_object(seen, self.run_dir)  # a list of str paths from the job's own ranks
        if len(set(seen)) > 1:
            listed = ", ".join(f"rank {rank}: {path}" for rank, path in enumerate(seen))
            raise ValueError(f"the job's processes write to different run directories ({listed}); give every node "
                             "the same run_dir=<a folder on a filesystem all nodes share>.")
