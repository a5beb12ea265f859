"""A weighted mixture of train sources (``data.train`` as a ``MixtureDataset``; the README shows the YAML).

Each epoch draws ``size`` samples (default: all sources' samples together): ``size x w_k / sum(w)`` from source
``k`` (largest remainders round), taken in order from that source's own stream of seeded permutations. A source
drawn less often than its size shows the next part of its permutation every epoch (all its samples over the
epochs), one drawn more often repeats, reshuffled. The draw is a pure function of ``(seed, epoch)``: every worker
and rank computes the same one, and a resumed run draws the same samples at the same positions (the loader's
``(epoch, index)`` keys reach :meth:`at_epoch`). Sample ids are prefixed with the source's name, and each sample's
``source`` names it (an LLM prompt can have a template per source: ``data.processor.prompt.source_templates``).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import Dataset

from mmtrain.data.resumable import derive_seed


class MixtureDataset(Dataset):
    """Several map-style sources drawn by weight (see the module).

    Args:
        sources: name -> ``{"dataset": <map-style dataset>, "weight": <float > 0>}``.
        seed: the run seed (the draw of an epoch derives from it).
        size: samples an epoch; ``None``: the sources' sizes summed.
    """

    def __init__(self, *, sources: Mapping[str, Mapping[str, Any]], seed: int = 0, size: int | None = None) -> None:
        if not sources:
            raise ValueError("data.train.sources is empty: give at least one {dataset, weight} source")
        self.names = [str(n) for n in sources]
        self.datasets, weights = [], []
        for name, spec in sources.items():
            dataset, weight = spec.get("dataset"), spec.get("weight", 1.0)
            if dataset is None or not hasattr(dataset, "__len__"):
                raise ValueError(f"data.train.sources.{name}.dataset must be a map-style dataset (streamed "
                                 "sources are not mixed yet)")
            if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
                raise ValueError(f"data.train.sources.{name}.weight is {weight!r}: a positive number")
            if len(dataset) == 0:
                raise ValueError(f"data.train.sources.{name} has no samples")
            self.datasets.append(dataset)
            weights.append(float(weight))
        self.weights = [w / sum(weights) for w in weights]
        self.seed = int(seed)
        self.size = int(size) if size is not None else sum(len(d) for d in self.datasets)
        if self.size <= 0:
            raise ValueError(f"data.train.size is {size!r}: a positive number of samples an epoch")
        self.counts = _apportion(self.size, self.weights)
        self.label_names = list(getattr(self.datasets[0], "label_names", []))
        for name, dataset in zip(self.names[1:], self.datasets[1:]):
            if list(getattr(dataset, "label_names", [])) != self.label_names:
                raise ValueError(f"data.train.sources.{name} has labels {getattr(dataset, 'label_names', [])}, "
                                 f"the first source {self.names[0]} has {self.label_names}: mixed sources share labels")
        self._starts = [sum(self.counts[:k]) for k in range(len(self.counts))]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Any:
        return self.at_epoch(0, index)

    def source_of(self, epoch: int, index: int) -> tuple[int, int]:
        """``(source number, its sample index)`` of mixture position ``index`` in ``epoch``."""
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for a mixture of {self.size} samples an epoch")
        source = bisect.bisect_right(self._starts, index) - 1
        position = epoch * self.counts[source] + (index - self._starts[source])  # in the source's endless stream
        length = len(self.datasets[source])
        cycle, offset = divmod(position, length)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "mixture", self.names[source], cycle))
        return source, int(torch.randperm(length, generator=generator)[offset])

    def at_epoch(self, epoch: int, index: int) -> Any:
        """Mixture position ``index`` of ``epoch``: a source's sample, its id prefixed with the source's name and
        its ``source`` set to it (an LLM prompt's ``source_templates`` follow it)."""
        source, inner = self.source_of(epoch, index)
        sample = self.datasets[source][inner]
        if isinstance(sample, dict):
            return {**sample, "id": f"{self.names[source]}/{sample['id']}", "source": self.names[source]}
        return dataclasses.replace(sample, id=f"{self.names[source]}/{sample.id}")  # skipped: the ledger names it


def _apportion(total: int, weights: list[float]) -> list[int]:
    """``total`` split by ``weights`` (largest remainders); every source at least one sample."""
    exact = [total * w for w in weights]
    counts = [max(1, int(x)) for x in exact]
    for k in sorted(range(len(weights)), key=lambda k: exact[k] - int(exact[k]), reverse=True):
        if sum(counts) >= total:
            break
        counts[k] += 1
    return counts
