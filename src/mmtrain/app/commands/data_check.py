"""``mmtrain data check``: decode every sample of every split, list the bad ones, train nothing.

Run it before a long job to see which files the skip ledger would drop (and whether a split is over
``callbacks.skip_ledger.max_skip_fraction``) without building a model or starting a trainer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch.utils.data import DataLoader

from mmtrain.config.targets import allow_prefixes, runtime_prefixes
from mmtrain.config.validate import validate_config
from mmtrain.data.skips import SkippedSample
from mmtrain.core.fileio import LineAppender, RunWriteError
from mmtrain.engine.build import build_data

#: ``progress(split, done, total)``; ``total`` is ``None`` for a stream of unknown length.
Progress = Callable[[str, int, "int | None"], None]


def _as_is(sample: Any) -> Any:
    """Collate nothing: the loader hands each decoded sample (or its SkippedSample) back as it is."""
    return sample


def default_ledger(cfg: DictConfig) -> Path:
    """``<output_root>/data_check/<name>_<timestamp>.jsonl``."""
    return Path(str(cfg.output_root)) / "data_check" / f"{cfg.name}_{time.strftime('%Y-%m-%d_%H-%M-%S')}.jsonl"


def check_data(cfg: DictConfig, *, out: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Decode every sample of the config's splits (with ``data.num_workers`` workers) and write one
    line per skipped sample to ``out`` (``{"id", "file", "modality", "error", "split"}``).

    Returns:
        ``{"ledger": str, "max_skip_fraction": float, "splits": {split: {"seen", "skipped",
        "fraction", "over_budget"}}}``.
    """
    allow_prefixes(cfg.get("allowed_target_prefixes") or [])
    prefixes = runtime_prefixes()
    validate_config(cfg, prefixes, ("data",))
    datamodule = build_data(cfg, prefixes)
    budget = float(((cfg.get("callbacks") or {}).get("skip_ledger") or {}).get("max_skip_fraction", 0.05))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("")
    except OSError as err:
        raise RunWriteError(out, err, what="data check ledger") from err
    ledger = LineAppender(out)
    splits: dict[str, dict[str, Any]] = {}
    try:
        for split, dataset in datamodule.splits.items():
            try:
                total: int | None = len(dataset)  # type: ignore[arg-type]
            except TypeError:  # a stream
                total = None
            loader = DataLoader(dataset, batch_size=None, num_workers=datamodule.num_workers, collate_fn=_as_is)
            seen = skipped = 0
            for sample in loader:
                seen += 1
                if isinstance(sample, SkippedSample):
                    skipped += 1
                    ledger.write(json.dumps({**sample.to_record(), "split": split}) + "\n")
                if progress is not None:
                    progress(split, seen, total)
            fraction = skipped / seen if seen else 0.0
            splits[split] = {"seen": seen, "skipped": skipped, "fraction": fraction, "over_budget": fraction > budget}
    finally:
        ledger.close()
    return {"ledger": str(out), "max_skip_fraction": budget, "splits": splits}
