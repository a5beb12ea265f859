"""``mmtrain data pairs``: SCUT-layout scores (and jsonl) -> balanced pair CSVs per fold, disjoint images,
every test pair for evaluation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mmtrain.app.cli import main


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_scut_labels_become_disjoint_balanced_folds_with_all_test_pairs(tmp_path: Path) -> None:
    labels = tmp_path / "All_labels.txt"  # SCUT-FBP5500: "<image> <score>" a line, scores 1..5
    labels.write_text("".join(f"CF{i:03d}.jpg {1 + (i * 7 % 40) / 10:.6f}\n" for i in range(30)))
    out = tmp_path / "pairs"
    assert main(["data", "pairs", str(labels), "--out", str(out), "--folds", "3", "--prefix", "Images/",
                 "--pairs-per-item", "6", "--similar-margin", "0.3"]) == 0
    tested: list[set[str]] = []
    for fold in range(3):
        images = {split: {p for r in rows(out / f"fold_{fold}" / f"{split}.csv") for p in (r["img1"], r["img2"])}
                  for split in ("train", "val", "test", "test_all_pairs")}
        assert images["train"].isdisjoint(images["val"]) and images["train"].isdisjoint(images["test"])
        assert images["val"].isdisjoint(images["test"]) and all(p.startswith("Images/CF") for p in images["train"])
        everything = rows(out / f"fold_{fold}" / "test_all_pairs.csv")
        n = len(images["test_all_pairs"])
        assert len(everything) == n * (n - 1) // 2 and images["test"] <= images["test_all_pairs"]
        for row in everything:  # labels follow the scores and the margin
            diff = float(row["score1"]) - float(row["score2"])
            assert row["label"] == ("Similar" if abs(diff) <= 0.3 else "First" if diff > 0 else "Second")
        labels_seen = [r["label"] for r in rows(out / f"fold_{fold}" / "train.csv")]
        assert min(labels_seen.count(k) for k in ("First", "Second", "Similar")) >= len(labels_seen) // 6  # all three
        tested.append(images["test_all_pairs"])
    assert all(a.isdisjoint(b) for i, a in enumerate(tested) for b in tested[i + 1:])  # each image tested once
    summary = json.loads((out / "pairs.json").read_text())
    assert summary["images"] == 30 and summary["k"] == 3 and "fold_0/train.csv" in summary["label_counts"]


def test_jsonl_items_and_bad_lines_are_named(tmp_path: Path) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"file": f"img/{i}.png", "beauty": i % 5}) + "\n" for i in range(12)))
    assert main(["data", "pairs", str(items), "--out", str(tmp_path / "o"), "--folds", "3", "--path-key", "file",
                 "--score-key", "beauty"]) == 0
    assert (tmp_path / "o" / "fold_2" / "test_all_pairs.csv").is_file()
    bad = tmp_path / "bad.txt"
    bad.write_text("a.jpg 1.0\nb.jpg high\n")
    from mmtrain.app.commands.data_pairs import read_scut_labels

    with pytest.raises(ValueError, match=r"bad.txt line 2"):
        read_scut_labels(bad)
