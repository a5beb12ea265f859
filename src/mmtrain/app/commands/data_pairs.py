"""``mmtrain data pairs``: scored images -> First / Second / Similar pair CSVs per fold, disjoint image sets.

The pairwise seed system's data step: per-image scores (a ``.jsonl`` / ``.csv`` of path + score, or
SCUT-FBP5500's ``All_labels.txt`` / ``train.txt`` layout: ``<image name> <score>`` per line) become ``k``
folds (:func:`mmtrain.data.formats.image_pairs.make_pair_splits`): fold ``i`` trains, validates and tests
on pairs within three disjoint image sets, each side balanced over the three labels where the scores allow
(a pair is ``Similar`` when the scores differ by at most ``--similar-margin``). Written::

    OUT/fold_<i>/train.csv, val.csv, test.csv     img1,img2,score1,score2,label (sampled pairs)
    OUT/fold_<i>/test_all_pairs.csv               every pair of the fold's test images (evaluation)
    OUT/pairs.json                                the settings and per-file label counts

Point ``data=image_pairs`` at a fold: ``data.train.csv_path=OUT/fold_0/train.csv`` ... and
``data.train.image_root=<the folder the image paths are relative to>``.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path


def read_scut_labels(file: str | Path, *, prefix: str = "") -> list[tuple[str, float]]:
    """``(prefix + image name, score)`` of every line ``<image name> <score>`` (SCUT-FBP5500's label files).

    Raises:
        ValueError: naming the file and line of one that is not a name and a number.
    """
    from mmtrain.data.formats.common import as_float  # the data layer loads torch: not at `mmtrain --help`

    path = Path(file)
    if not path.is_file():
        raise FileNotFoundError(f"label file {path} does not exist")
    items = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path} line {number}: expected '<image name> <score>', got {line!r}")
        items.append((prefix + parts[0], as_float(parts[1], f"{path} line {number}", "score")))
    return items


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``pairs`` as a sub-command of ``mmtrain data``."""
    parser = subparsers.add_parser("pairs", help="scored images -> pair CSVs per fold (disjoint image sets)",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("items", help="scores: .jsonl / .csv (--path-key, --score-key) or SCUT-style .txt lines")
    parser.add_argument("--out", required=True, help="output folder (fold_<i>/ and pairs.json)")
    parser.add_argument("--folds", type=int, default=5, help="k >= 3 (default: %(default)s)")
    parser.add_argument("--similar-margin", type=float, default=0.5,
                        help="largest score difference of a Similar pair (default: %(default)s)")
    parser.add_argument("--pairs-per-item", type=int, default=10,
                        help="each image is in about this many sampled pairs (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same folds (default: %(default)s)")
    parser.add_argument("--path-key", default="path", help="jsonl/csv key of the image path (default: %(default)s)")
    parser.add_argument("--score-key", default="score", help="jsonl/csv key of the score (default: %(default)s)")
    parser.add_argument("--prefix", default="", help="written before each image name of a .txt file (e.g. Images/)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Write the folds; print one line per fold; returns the exit code."""
    from mmtrain.data.formats.image_pairs import make_pair_splits, read_scored_items, write_pair_csv

    source = Path(args.items)
    if source.suffix == ".txt":
        items = read_scut_labels(source, prefix=args.prefix)
    else:
        items = read_scored_items(source, path_key=args.path_key, score_key=args.score_key)
    options = {"k": args.folds, "seed": args.seed, "pairs_per_item": args.pairs_per_item,
               "similar_margin": args.similar_margin}
    sampled = make_pair_splits(items, **options)
    every = make_pair_splits(items, **options, eval_all_pairs=True)  # the same parts: the seed decides them
    out = Path(args.out)
    counts: dict[str, dict[str, int]] = {}
    for fold, (splits, full) in enumerate(zip(sampled, every)):
        files = {**{f"fold_{fold}/{name}.csv": pairs for name, pairs in splits.items()},
                 f"fold_{fold}/test_all_pairs.csv": full["test"]}
        for name, pairs in files.items():
            write_pair_csv(pairs, out / name)
            counts[name] = dict(Counter(pair.label for pair in pairs))
        print(f"fold {fold}: " + ", ".join(f"{Path(n).stem} {sum(counts[n].values())}" for n in files))
    (out / "pairs.json").write_text(json.dumps({"items": str(source), "images": len(items), **options,
                                                "label_counts": counts}, indent=1) + "\n")
    print(f"{len(items)} images, {args.folds} folds -> {out} (pairs.json lists the label counts)")
    return 0
