"""``mmtrain kfold``: k-fold cross-validation of a pairwise experiment in one command.

The composed config's ``kfold`` section says where the scored items come from and how to pair
them::

    kfold:
      k: 5                     # folds (>= 3: train, val and test take separate parts)
      seed: 0                  # shuffles the items into parts and samples the pairs
      items:                   # scored items, pooled from several files (.jsonl or .csv)
        - {file: <path>, path_key: image_path, score_key: label}
      image_root: <folder>     # the item paths are relative to it (the pair datasets' image_root)
      pairs_per_item: 6        # each image is in about this many pairs of its split
      similar_margin: 0.5      # score difference up to which a pair is Similar
      eval_all_pairs: false    # val/test on every pair of their images instead of a sample

The items are shuffled (``kfold.seed``) and cut into ``k`` parts. Fold ``i`` tests on pairs within
part ``i``, validates (checkpoint choice, early stopping) on pairs within part ``(i + 1) % k`` and
trains on pairs within the remaining parts: three disjoint image sets, every image tested once.
Each fold's CSVs go to ``<run>/fold_<i>/pairs/{train,val,test}.csv``; the normal ``train()`` then
runs into ``<run>/fold_<i>/`` with ``data.{train,val,test}.csv_path`` pointed at them. Every fold
trains with the same ``seed`` (the config's), so folds differ only in their data.

``<run>/kfold.json`` is rewritten after every fold (per-fold test metrics, then mean and sample
standard deviation over the finished folds), so a fold that fails loses nothing already done; the
failure is recorded and the remaining folds still run.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import statistics
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from mmtrain.config.instantiate import safe_instantiate
from mmtrain.data.formats.image_pairs import (
    make_pair_splits,
    read_scored_items,
    write_pair_csv,
)
from mmtrain.app.report.html import write_report
from mmtrain.app.commands.train import make_run_dir, prepare

log = logging.getLogger(__name__)

SUMMARY_METRICS = ("acc", "macro_f1", "bt_pearson", "bt_spearman", "swap_consistency_rate")
SPLITS = ("train", "val", "test")
KFOLD_KEYS = {"k", "seed", "items", "image_root", "pairs_per_item", "similar_margin", "eval_all_pairs"}


def kfold_spec(cfg: DictConfig) -> dict[str, Any]:
    """The resolved, checked ``kfold`` section."""
    if cfg.get("kfold") is None:
        raise ValueError(
            "mmtrain kfold needs a 'kfold' config section (k, seed, items, image_root, pairs_per_item, "
            "similar_margin, eval_all_pairs); see experiment/pairwise_digits.yaml."
        )
    spec = OmegaConf.to_container(cfg.kfold, resolve=True)
    unknown = sorted(set(spec) - KFOLD_KEYS)
    if unknown:
        raise ValueError(f"config key 'kfold.{unknown[0]}' is unknown; kfold takes {sorted(KFOLD_KEYS)}.")
    for key in ("k", "items", "image_root"):
        if spec.get(key) in (None, "", []):
            raise ValueError(f"config key 'kfold.{key}' must be set.")
    for index, source in enumerate(spec["items"]):
        if not isinstance(source, dict) or not {"file", "path_key", "score_key"} <= set(source):
            raise ValueError(f"config key 'kfold.items[{index}]' needs file, path_key and score_key, got {source!r}")
    for split in SPLITS:
        if cfg.data.get(split) is None or "csv_path" not in cfg.data[split]:
            raise ValueError(f"config key 'data.{split}.csv_path' must exist: kfold points it at each fold's pairs.")
    return {
        "k": int(spec["k"]), "seed": int(spec.get("seed") or 0), "items": spec["items"],
        "image_root": str(spec["image_root"]), "pairs_per_item": int(spec.get("pairs_per_item", 6)),
        "similar_margin": float(spec.get("similar_margin", 0.5)),
        "eval_all_pairs": bool(spec.get("eval_all_pairs", False)),
    }


def write_folds(spec: dict[str, Any], run_dir: Path) -> list[dict[str, Any]]:
    """Write every fold's pair CSVs; returns per fold its CSV paths, image and pair counts."""
    items = [item for source in spec["items"]
             for item in read_scored_items(source["file"], path_key=source["path_key"], score_key=source["score_key"])]
    missing = [path for path, _ in items[:50] if not (Path(spec["image_root"]) / path).is_file()]
    if missing:
        raise FileNotFoundError(
            f"kfold.image_root {spec['image_root']} lacks the item {missing[0]!r}; item paths are relative to it."
        )
    folds = make_pair_splits(items, spec["k"], spec["seed"], spec["pairs_per_item"], spec["similar_margin"],
                             eval_all_pairs=spec["eval_all_pairs"])
    written = []
    for index, pairs in enumerate(folds):
        folder = run_dir / f"fold_{index}" / "pairs"
        written.append({
            "csv": {split: str(write_pair_csv(pairs[split], folder / f"{split}.csv")) for split in SPLITS},
            "images": {split: len({p for row in pairs[split] for p in (row.img1, row.img2)}) for split in SPLITS},
            "pairs": {split: len(pairs[split]) for split in SPLITS},
        })
    return written


def fold_config(cfg: DictConfig, fold: dict[str, Any], run_dir: Path) -> DictConfig:
    """The experiment's config for one fold: its own run directory and pair CSVs."""
    fold_cfg = copy.deepcopy(cfg)
    with open_dict(fold_cfg):
        fold_cfg.run_dir = str(run_dir)
        for split in SPLITS:
            fold_cfg.data[split].csv_path = fold["csv"][split]
    return fold_cfg


def summarize(folds: list[dict[str, Any]]) -> dict[str, dict[str, float | int | None]]:
    """Mean and sample standard deviation (n - 1) of each summary test metric over finished folds."""
    summary: dict[str, dict[str, float | int | None]] = {}
    for metric in SUMMARY_METRICS:
        values = [f["test"][metric] for f in folds if isinstance((f.get("test") or {}).get(metric), (int, float))]
        values = [float(v) for v in values if not math.isnan(float(v))]
        summary[metric] = {
            "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else (0.0 if values else None),
            "n": len(values),
        }
    return summary


def run_kfold(cfg: DictConfig, train_fn: Callable[[DictConfig], dict[str, Any]]) -> dict[str, Any]:
    """Write the folds, train each with ``train_fn`` (``mmtrain.app.commands.train.train``); returns kfold.json's content."""
    cfg, prefixes = prepare(cfg)
    spec = kfold_spec(cfg)
    if cfg.data.get("prepare") is not None:  # e.g. build the demo set before reading its items
        safe_instantiate(cfg.data.prepare, prefixes, config_key="data.prepare")
    run_dir = make_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    written = write_folds(spec, run_dir)
    report: dict[str, Any] = {"run_dir": str(run_dir), "kfold": spec, "seed": int(cfg.seed), "folds": [],
                              "summary": {}, "failed": []}
    for index, fold in enumerate(written):
        fold_dir = run_dir / f"fold_{index}"
        entry: dict[str, Any] = {"fold": index, "run_dir": str(fold_dir), **fold}
        log.info("fold %d/%d: %s", index + 1, len(written), fold["images"])
        try:
            metrics = train_fn(fold_config(cfg, fold, fold_dir))
            entry.update({"test": metrics.get("test", {}), "val": metrics.get("val", {}),
                          "fit_seconds": metrics.get("fit_seconds"), "epochs": metrics.get("epochs")})
        except Exception as err:  # noqa: BLE001  (keep the finished folds; record why this one failed)
            log.error("fold %d failed: %s", index, err)
            entry["error"] = f"{type(err).__name__}: {err}"
            (fold_dir / "error.txt").write_text(traceback.format_exc())
            report["failed"].append(index)
        report["folds"].append(entry)
        report["summary"] = summarize(report["folds"])
        (run_dir / "kfold.json").write_text(json.dumps(report, indent=2))
        write_report(run_dir)
    return report
