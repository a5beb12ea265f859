"""Image pairs labelled First / Second / Similar, and k-fold pair generation with disjoint images.

CSV columns: ``img1,img2,score1,score2,label`` (scores optional), image paths relative to
``image_root``, ``label`` one of ``First`` (the first image scores higher), ``Second``, ``Similar``.

:func:`make_pair_folds` builds the CSVs from scored images: the label of a pair is ``First`` if
``score1 - score2 > similar_margin``, ``Second`` if ``< -similar_margin``, else ``Similar``. The
items are shuffled (seeded) and cut into ``k`` equal parts; fold ``i`` evaluates on pairs within
part ``i`` and trains on pairs within the other parts, so no image is in both sides of a fold and
each image is evaluated in exactly one fold.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from mmtrain.data.formats.common import (
    LabelMap,
    MediaRef,
    Record,
    RecordDataset,
    as_float,
    read_csv,
    read_records,
    require_dir,
    resolve,
)

PAIR_LABELS = ("First", "Second", "Similar")
COLUMNS = ("img1", "img2", "score1", "score2", "label")
_ENUMERATE_LIMIT = 200_000  # unordered pairs; above this, candidates are drawn at random


class PairRow(NamedTuple):
    """One CSV row: two image paths (relative to the image root), their scores, the label name."""

    img1: str
    img2: str
    score1: float
    score2: float
    label: str


class ImagePairDataset(RecordDataset):
    """Pairs of images with a comparison label, from an ``img1,img2,score1,score2,label`` CSV.

    Args:
        csv_path: the pair CSV.
        image_root: folder the image paths are relative to.
        label_names: class names in index order.
        encoding: the CSV's text encoding.
        allow_outside_root: use media paths that lead outside the data root as written (default: refused).

    Returns (per item): ``{"id": "<img1>|<img2>" ("#n" appended for the n-th repeat),
    "image": [PIL RGB, PIL RGB], "label": int, "item_ids": [img1, img2] (the CSV paths),
    "item_scores": [score1, score2] (NaN when a score is not given), "meta": {"img1", "img2",
    "score1", "score2", "label_name"}}``, or a :class:`~mmtrain.data.skips.SkippedSample` when either image cannot be
    decoded.
    """

    def __init__(
        self,
        *,
        csv_path: str,
        image_root: str,
        label_names: Sequence[str] = PAIR_LABELS,
        encoding: str = "utf-8-sig",
        allow_outside_root: bool = False,
    ) -> None:
        labels = LabelMap(label_names, type(self).__name__)
        if not labels:
            raise ValueError(f"{type(self).__name__}: label_names is empty")
        self.label_names = labels.names
        self.image_root = str(image_root)
        require_dir(image_root, "image")
        rows = read_csv(csv_path, required=("img1", "img2", "label"), encoding=encoding)
        seen: dict[str, int] = {}
        self.records = []
        for where, row in rows:
            meta: dict[str, object] = {"img1": row["img1"], "img2": row["img2"], "label_name": row["label"].strip()}
            for key in ("score1", "score2"):
                if row.get(key) not in (None, ""):
                    meta[key] = as_float(row[key], where, key)
            for key in ("img1", "img2"):
                if not row[key].strip():
                    raise ValueError(f"{where}: {key} is empty")
            base = f"{row['img1']}|{row['img2']}"
            seen[base] = seen.get(base, 0) + 1
            fields = {
                "id": base if seen[base] == 1 else f"{base}#{seen[base]}",
                "label": labels.index(row["label"].strip(), where, "label"),
                "item_ids": [row["img1"], row["img2"]],
                "item_scores": [float(meta.get("score1", math.nan)), float(meta.get("score2", math.nan))],
                "meta": meta,
            }
            refs = tuple(MediaRef("image", resolve(image_root, row[key], f"{where} {key}",
                                                 allow_outside_root=allow_outside_root)) for key in ("img1", "img2"))
            self.records.append(Record(fields, {"image": refs}))


def pair_label(score1: float, score2: float, similar_margin: float) -> str:
    """``First`` if ``score1 - score2 > margin``, ``Second`` if ``< -margin``, else ``Similar``."""
    diff = score1 - score2
    return "First" if diff > similar_margin else "Second" if diff < -similar_margin else "Similar"


def _candidates(n: int, rng: np.random.Generator, wanted: int | None) -> Iterator[tuple[int, int]]:
    """Distinct unordered index pairs ``(i < j)`` in random order: all of them (``wanted`` None, or
    few pairs), else drawn at random in batches (at most ``50 * wanted`` draws)."""
    total = n * (n - 1) // 2
    if wanted is None or total <= _ENUMERATE_LIMIT:
        left, right = np.triu_indices(n, k=1)
        order = rng.permutation(total)
        yield from zip(left[order].tolist(), right[order].tolist(), strict=True)
        return
    seen: set[tuple[int, int]] = set()
    for _ in range(50 * wanted // 4096 + 1):
        draws = rng.integers(n, size=(4096, 2))
        for i, j in zip(draws.min(axis=1).tolist(), draws.max(axis=1).tolist(), strict=True):
            if i != j and (i, j) not in seen:
                seen.add((i, j))
                yield i, j


def _sample_pairs(
    items: Sequence[tuple[str, float]], count: int | None, rng: np.random.Generator, margin: float
) -> list[PairRow]:
    """``count`` pairs (all when None) about a third of each label; First/Second by orientation."""
    n = len(items)
    total = n * (n - 1) // 2
    wanted = total if count is None else min(int(count), total)
    quota = {"Similar": wanted // 3, "Different": wanted - wanted // 3}
    chosen: list[PairRow] = []
    spare: list[tuple[int, int]] = []
    directions = {"First": 0, "Second": 0}

    def add(i: int, j: int) -> None:
        a, b = items[i], items[j]
        label = pair_label(a[1], b[1], margin)
        if label != "Similar":  # orient so First and Second stay balanced
            want = "First" if directions["First"] <= directions["Second"] else "Second"
            if label != want:
                a, b, label = b, a, want
            directions[label] += 1
        chosen.append(PairRow(a[0], b[0], float(a[1]), float(b[1]), label))

    for i, j in _candidates(n, rng, None if count is None else wanted):
        if len(chosen) == wanted:
            break
        group = "Similar" if abs(items[i][1] - items[j][1]) <= margin else "Different"
        if quota[group] > 0:
            quota[group] -= 1
            add(i, j)
        elif len(spare) < wanted:
            spare.append((i, j))
    for i, j in spare[: wanted - len(chosen)]:  # one label is scarce: fill with the others
        add(i, j)
    return chosen


def make_pair_folds(
    items: Sequence[tuple[str, float]],
    k: int = 5,
    seed: int = 0,
    pairs_per_item: int = 10,
    similar_margin: float = 0.5,
    *,
    eval_all_pairs: bool = False,
) -> list[tuple[list[PairRow], list[PairRow]]]:
    """``k`` folds of ``(train_pairs, eval_pairs)`` whose image sets are disjoint within a fold.

    Args:
        items: ``(image_path, score)`` for every image; paths must be unique.
        k: number of folds (``2 <= k <= len(items)``).
        seed: the same seed gives the same folds and pairs.
        pairs_per_item: pairs per side are ``round(pairs_per_item * items_on_that_side / 2)``, so
            each image is in about ``pairs_per_item`` pairs (capped at all possible pairs).
        similar_margin: score difference up to which a pair is ``Similar``.
        eval_all_pairs: evaluate on every pair of the fold's eval images instead of a sample.

    Returns:
        ``[(train_pairs, eval_pairs)] * k``; each side has about a third of each label when the
        scores allow it (First/Second are balanced by ordering each pair).
    """
    parts = _fold_parts(items, k, seed, "make_pair_folds")
    folds = []
    for fold, held_out in enumerate(parts):
        train_items = [item for other, part in enumerate(parts) if other != fold for item in part]
        train = _sample_pairs(
            train_items, round(pairs_per_item * len(train_items) / 2), np.random.default_rng([seed, fold, 1]),
            similar_margin,
        )
        count = None if eval_all_pairs else round(pairs_per_item * len(held_out) / 2)
        evaluation = _sample_pairs(held_out, count, np.random.default_rng([seed, fold, 2]), similar_margin)
        folds.append((train, evaluation))
    return folds


def _fold_parts(items: Sequence[tuple[str, float]], k: int, seed: int, owner: str) -> list[list[tuple[str, float]]]:
    """Checked ``(path, score)`` items shuffled with ``seed`` and cut into ``k`` near-equal parts."""
    paths = [str(path) for path, _ in items]
    if len(set(paths)) != len(paths):
        duplicated = next(p for p in paths if paths.count(p) > 1)
        raise ValueError(f"{owner}: image {duplicated!r} is listed twice")
    if not 2 <= int(k) <= len(items):
        raise ValueError(f"{owner}: need 2 <= k <= {len(items)} items, got k={k}")
    scored = [(str(path), float(score)) for path, score in items]
    for path, score in scored:
        if not math.isfinite(score):
            raise ValueError(f"{owner}: score of {path!r} is {score}")
    order = np.random.default_rng([seed, 0]).permutation(len(scored))
    return [[scored[i] for i in part] for part in np.array_split(order, int(k))]


def make_pair_splits(
    items: Sequence[tuple[str, float]],
    k: int = 5,
    seed: int = 0,
    pairs_per_item: int = 10,
    similar_margin: float = 0.5,
    *,
    eval_all_pairs: bool = False,
) -> list[dict[str, list[PairRow]]]:
    """``k`` folds of ``{"train", "val", "test": pairs}`` over three disjoint image sets.

    The items are cut into ``k`` parts exactly as in :func:`make_pair_folds` (same seed, same
    parts): fold ``i`` tests on pairs within part ``i``, validates on pairs within the next part
    ``(i + 1) % k`` and trains on pairs within the other ``k - 2`` parts, so every image is tested
    in exactly one fold and no image is in two splits of a fold (needs ``k >= 3``). Pair counts
    follow ``pairs_per_item`` as in :func:`make_pair_folds`; ``eval_all_pairs`` uses every pair
    of the val and test images.
    """
    if int(k) < 3:
        raise ValueError(f"kfold.k must be >= 3 (train, val and test take separate parts), got {k}")
    parts = _fold_parts(items, k, seed, "make_pair_splits")
    folds = []
    for fold in range(int(k)):
        val_part = (fold + 1) % int(k)
        sides = {
            "train": [item for other, part in enumerate(parts) if other not in (fold, val_part) for item in part],
            "val": parts[val_part],
            "test": parts[fold],
        }
        split_pairs = {}
        for tag, (name, side) in enumerate(sides.items(), start=1):
            count = None if eval_all_pairs and name != "train" else round(pairs_per_item * len(side) / 2)
            split_pairs[name] = _sample_pairs(side, count, np.random.default_rng([seed, fold, 10 + tag]), similar_margin)
        folds.append(split_pairs)
    return folds


def read_scored_items(file: str | Path, *, path_key: str, score_key: str) -> list[tuple[str, float]]:
    """``(path, score)`` of every row of a ``.jsonl`` (one JSON object a line) or ``.csv`` file.

    Raises:
        ValueError: naming the file and line of a row without ``path_key`` / a numeric ``score_key``.
    """
    path = Path(file)
    if not path.is_file():
        raise FileNotFoundError(f"scored-items file {path} does not exist")
    if path.suffix == ".csv":
        rows: list[tuple[str, dict[str, Any]]] = list(read_csv(path, required=(path_key, score_key)))
    else:
        rows = read_records(path)  # malformed or too-deep JSON: named with file and row
    items = []
    for where, row in rows:
        if row.get(path_key) in (None, "") or row.get(score_key) in (None, ""):
            raise ValueError(f"{where}: needs '{path_key}' and '{score_key}' (got keys {sorted(row)})")
        items.append((str(row[path_key]), as_float(row[score_key], where, score_key)))
    return items


def write_pair_csv(pairs: Sequence[PairRow | tuple[str, str, float, float, str]], path: str | Path) -> Path:
    """Write ``img1,img2,score1,score2,label`` rows (folders created); returns the path."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    with file.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for pair in pairs:
            img1, img2, score1, score2, label = pair
            if label not in PAIR_LABELS:
                raise ValueError(f"write_pair_csv: label {label!r} is not one of {list(PAIR_LABELS)}")
            writer.writerow([img1, img2, repr(float(score1)), repr(float(score2)), label])
    return file
