"""Samples dropped because their media cannot be decoded, and how datasets report them.

A dataset never returns an empty tensor for a broken file: it returns a :class:`SkippedSample`
instead of the sample. The processor's collate keeps such records out of the tensors and passes
them along as ``batch["skipped"]``; the :class:`~mmtrain.engine.callbacks.ledger.SkipLedger` callback
writes them to ``skipped.jsonl`` in the run directory, counts them and enforces the skip budget.
Records travel inside batches, so every DataLoader worker's skips reach the main process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from mmtrain.data.media import MediaError


@dataclass(frozen=True)
class SkippedSample:
    """One sample left out: its id, the file and modality that failed, and why."""

    id: str
    file: str
    modality: str
    error: str

    def to_record(self) -> dict[str, str]:
        return asdict(self)


def load_media(sample: dict[str, Any], loaders: dict[str, Callable[[], Any]]) -> dict[str, Any] | SkippedSample:
    """Fill ``sample[modality] = loader()`` for each loader, or return the first failure as a skip.

    Only :class:`MediaError` (a broken or missing media file) becomes a skip; a bug still raises.

    Args:
        sample: the raw sample so far (must have ``id``).
        loaders: modality -> zero-argument function decoding that modality.
    """
    for modality, loader in loaders.items():
        try:
            sample[modality] = loader()
        except MediaError as err:
            return SkippedSample(id=str(sample["id"]), file=err.path, modality=err.modality, error=err.reason)
    return sample
