"""Several named evaluation sources (``data.val`` as a mapping of datasets): metrics per source.

``data.val: {studio: <dataset>, web: <dataset>}`` gives one validation DataLoader per source; the task reports
each source's metrics as ``val/<source>/<metric>`` and, as ``val/<metric>`` (what checkpoints and early stopping
follow), their mean over the sources, each source counting once. Everything that needs the split as one
dataset (label checks, the LLM's token budget, ``mmtrain data check``) sees :class:`NamedSources`: the sources
one after another, ids prefixed with the source's name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch.utils.data import Dataset


def prefixed(sample: Any, name: str) -> Any:
    """``sample`` (or the :class:`~mmtrain.data.skips.SkippedSample` in its place) with its id as ``<name>/<id>``."""
    if isinstance(sample, dict):
        return {**sample, "id": f"{name}/{sample['id']}"}
    return dataclasses.replace(sample, id=f"{name}/{sample.id}")


class Source(Dataset):
    """One named source: its samples with prefixed ids."""

    def __init__(self, name: str, dataset: Dataset) -> None:
        self.name, self.dataset = name, dataset
        self.label_names = list(getattr(dataset, "label_names", []) or [])

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return prefixed(self.dataset[index], self.name)


class NamedSources(Dataset):
    """Map-style sources by name, read one after another (see the module).

    Args:
        sources: name -> map-style dataset (all with the same ``label_names``).
        split: the config key, for errors (``val``, ``test``).
    """

    def __init__(self, sources: Mapping[str, Dataset], split: str = "val") -> None:
        if len(sources) < 2:
            raise ValueError(f"data.{split} as named sources needs at least two (give one dataset otherwise)")
        self.sources = [Source(str(name), dataset) for name, dataset in sources.items()]
        for source in self.sources:
            if not hasattr(source.dataset, "__len__") or not hasattr(source.dataset, "__getitem__"):
                raise ValueError(f"data.{split}.{source.name} must be a map-style dataset (streamed sources are not "
                                 "named sources yet)")
        self.names = [s.name for s in self.sources]
        self.label_names = self.sources[0].label_names
        for source in self.sources[1:]:
            if source.label_names != self.label_names:
                raise ValueError(f"data.{split}.{source.name} has labels {source.label_names}, {self.names[0]} has "
                                 f"{self.label_names}: named sources share their labels")
        self._starts = [0]
        for source in self.sources:
            self._starts.append(self._starts[-1] + len(source))

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        number = max(k for k, start in enumerate(self._starts[:-1]) if start <= index)
        return self.sources[number][index - self._starts[number]]

    def sample_views(self) -> list[dict[str, Any]] | None:
        """The sources' views (ids prefixed), when each can list them without decoding."""
        views = []
        for source in self.sources:
            listed = getattr(source.dataset, "sample_views", None)
            if not callable(listed):
                return None
            views += [{**view, "id": f"{source.name}/{view.get('id')}"} for view in listed()]
        return views
