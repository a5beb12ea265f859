"""Validation metrics per named source (``data.val`` as a mapping of datasets, :mod:`mmtrain.data.sources`).

Each source's batches come from their own DataLoader; the task runs its usual step and epoch-end code under the
split name ``val/<source>``, with accumulators of its own (copies of the ``val`` ones, made when validation
starts), so every task reports ``val/<source>/<metric>`` without code of its own. ``val/<metric>``, which the best
checkpoint and early stopping follow, is the mean of the sources' values (``n``, a count, is their sum).
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn


class ValSources:
    """Mixed into :class:`~mmtrain.engine.tasks.base.TaskBase`: the split of each val DataLoader."""

    #: ``val/<source>`` per val DataLoader, in order; empty with one val dataset.
    val_splits: list[str] = []

    def on_validation_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)  # type: ignore[attr-defined]
        self.val_splits = [f"val/{name}" for name in getattr(datamodule, "val_sources", None) or []]
        for split in self.val_splits:
            self.add_split(split)

    def split_of(self, dataloader_idx: int) -> str:
        """The split name of val DataLoader ``dataloader_idx``."""
        return self.val_splits[dataloader_idx] if self.val_splits else "val"

    def add_split(self, split: str, like: str = "val") -> None:
        """Fresh accumulators for ``split`` shaped like ``like``'s: each ``<like>_<kind>`` entry of the task's
        ModuleDicts copied (and reset) to ``<split>_<kind>``, each list kept per split emptied."""
        holders: list[Any] = [*self._modules.values(), *vars(self).values()]  # type: ignore[attr-defined]
        for holder in holders:
            if isinstance(holder, nn.ModuleDict):
                for key in [k for k in holder.keys() if k.startswith(f"{like}_")]:
                    name = split + key[len(like):]
                    if name not in holder:
                        holder[name] = copy.deepcopy(holder[key])
                        if callable(getattr(holder[name], "reset", None)):
                            holder[name].reset()
            elif isinstance(holder, dict) and isinstance(holder.get(like), list):
                holder[split] = []

    def finish_sources(self, sanity: bool) -> None:
        """Each source's results (or, in the sanity check, their discarding); then their mean as ``val``."""
        for split in self.val_splits:
            self._discard(split) if sanity else self._finish(split)  # type: ignore[attr-defined]
        if sanity:
            return
        results = [self.results[split] for split in self.val_splits]  # type: ignore[attr-defined]
        keys = [k for k in results[0] if all(_number(r.get(k)) for r in results)]
        mean = {k: (sum if k == "n" else _mean)([float(r[k]) for r in results]) for k in keys}
        self.results["val"] = mean  # type: ignore[attr-defined]
        self.log_split_results("val", mean)  # type: ignore[attr-defined]


def _number(value: Any) -> bool:
    if hasattr(value, "numel") and value.numel() == 1:
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
