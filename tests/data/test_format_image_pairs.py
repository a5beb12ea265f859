"""ImagePairDataset and k-fold pair generation with disjoint image sets."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from mmtrain.data.formats.image_pairs import (
    PAIR_LABELS,
    ImagePairDataset,
    PairRow,
    make_pair_folds,
    pair_label,
    write_pair_csv,
)

from ._media import assert_skip, image_bytes, write_image

RED, BLUE, GREEN = (200, 10, 10), (10, 10, 200), (10, 200, 10)


@pytest.fixture
def pairs(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "images"
    write_image(root / "a.png", RED)
    write_image(root / "sub" / "b.jpg", BLUE, size=(16, 16))
    write_image(root / "c.png", GREEN)
    rows = [["a.png", "sub/b.jpg", "4.5", "2.0", "First"], ["c.png", "a.png", "3.0", "3.1", "Similar"],
            ["sub/b.jpg", "c.png", "2.0", "3.0", "Second"], ["a.png", "sub/b.jpg", "4.5", "2.0", "First"]]
    csv_path = tmp_path / "pairs.csv"
    with csv_path.open("w", newline="") as handle:
        csv.writer(handle).writerows([["img1", "img2", "score1", "score2", "label"], *rows])
    return csv_path, root


def _close(pixel: tuple[int, ...], color: tuple[int, int, int], tolerance: int = 12) -> bool:
    return all(abs(p - c) <= tolerance for p, c in zip(pixel, color, strict=True))


def test_pairs_are_two_images_label_and_scores(pairs: tuple[Path, Path]) -> None:
    csv_path, root = pairs
    dataset = ImagePairDataset(csv_path=str(csv_path), image_root=str(root))
    assert dataset.label_names == ["First", "Second", "Similar"] and len(dataset) == 4
    assert dataset.ids == ["a.png|sub/b.jpg", "c.png|a.png", "sub/b.jpg|c.png", "a.png|sub/b.jpg#2"]
    sample = dataset[0]
    assert set(sample) == {"id", "image", "label", "item_ids", "item_scores", "meta"}
    assert sample["item_ids"] == ["a.png", "sub/b.jpg"] and sample["item_scores"] == [4.5, 2.0]
    first, second = sample["image"]
    assert first.mode == second.mode == "RGB" and first.size == (12, 10) and second.size == (16, 16)
    assert _close(first.getpixel((2, 2)), RED) and _close(second.getpixel((2, 2)), BLUE)  # jpg is lossy
    assert sample["label"] == 0
    assert sample["meta"] == {"img1": "a.png", "img2": "sub/b.jpg", "score1": 4.5, "score2": 2.0, "label_name": "First"}
    assert [dataset[i]["label"] for i in range(4)] == [0, 2, 1, 0]


def test_annotation_errors_name_file_and_row(pairs: tuple[Path, Path], tmp_path: Path) -> None:
    csv_path, root = pairs
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        ImagePairDataset(csv_path=str(tmp_path / "nope.csv"), image_root=str(root))
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join([*lines[:3], "a.png,c.png,1,2,Third"]) + "\n")
    with pytest.raises(ValueError, match=r"pairs.csv row 4: label 'Third' is not one of \['First', 'Second', 'Similar'\]"):
        ImagePairDataset(csv_path=str(csv_path), image_root=str(root))
    csv_path.write_text("\n".join([*lines[:2], "a.png,c.png,high,2,First"]) + "\n")
    with pytest.raises(ValueError, match="pairs.csv row 3: score1 'high' is not a number"):
        ImagePairDataset(csv_path=str(csv_path), image_root=str(root))
    csv_path.write_text("img1,img2,score1,score2\na.png,c.png,1,2\n")
    with pytest.raises(ValueError, match="pairs.csv: no column 'label'"):
        ImagePairDataset(csv_path=str(csv_path), image_root=str(root))


def test_broken_images_become_skips(pairs: tuple[Path, Path]) -> None:
    csv_path, root = pairs
    jpg = image_bytes(BLUE, fmt="JPEG")
    (root / "sub" / "b.jpg").write_bytes(jpg[: len(jpg) // 2])  # broken jpg bytes
    (root / "c.png").write_bytes(b"")
    dataset = ImagePairDataset(csv_path=str(csv_path), image_root=str(root))
    assert_skip(dataset[0], root / "sub" / "b.jpg", "image")
    assert_skip(dataset[1], root / "c.png", "image")
    (root / "a.png").unlink()
    assert_skip(dataset[3], root / "a.png", "image")


def _items(n: int = 40) -> list[tuple[str, float]]:
    return [(f"img_{i:03d}.jpg", 1.0 + 4.0 * ((i * 37) % n) / n) for i in range(n)]


def test_folds_have_disjoint_images_and_cover_every_item_once() -> None:
    items = _items()
    folds = make_pair_folds(items, k=5, seed=7, pairs_per_item=6, similar_margin=0.4)
    assert len(folds) == 5
    eval_items: list[str] = []
    for train, evaluation in folds:
        train_set = {p for pair in train for p in (pair.img1, pair.img2)}
        eval_set = {p for pair in evaluation for p in (pair.img1, pair.img2)}
        assert train_set and eval_set and not train_set & eval_set
        eval_items += sorted(eval_set)
        assert len(train) == round(6 * 32 / 2) and len(evaluation) == round(6 * 8 / 2)
        for pair in train + evaluation:
            assert pair.img1 != pair.img2 and pair.label == pair_label(pair.score1, pair.score2, 0.4)
        counts = Counter(pair.label for pair in train)
        assert all(counts[label] >= len(train) // 4 for label in PAIR_LABELS), counts
        assert len({frozenset((p.img1, p.img2)) for p in train}) == len(train)  # no repeated pair
    assert Counter(eval_items) == Counter(path for path, _ in items)  # each item evaluated exactly once


def test_folds_are_deterministic_and_all_eval_pairs_option() -> None:
    items = _items(20)
    assert make_pair_folds(items, k=4, seed=1) == make_pair_folds(items, k=4, seed=1)
    assert make_pair_folds(items, k=4, seed=1) != make_pair_folds(items, k=4, seed=2)
    folds = make_pair_folds(items, k=4, seed=1, pairs_per_item=2, eval_all_pairs=True)
    assert all(len(evaluation) == 5 * 4 // 2 for _, evaluation in folds)
    with pytest.raises(ValueError, match="listed twice"):
        make_pair_folds([*items, items[0]], k=2)
    with pytest.raises(ValueError, match="need 2 <= k"):
        make_pair_folds(items[:3], k=4)


def test_written_fold_csv_reads_back(tmp_path: Path) -> None:
    colors = {f"img_{i}.png": (20 * i, 0, 0) for i in range(10)}
    for name, color in colors.items():
        write_image(tmp_path / "images" / name, color)
    items = [(name, float(i)) for i, name in enumerate(colors)]
    train, evaluation = make_pair_folds(items, k=2, seed=0, pairs_per_item=4, similar_margin=1.0)[0]
    path = write_pair_csv(train, tmp_path / "folds" / "train_fold1.csv")
    dataset = ImagePairDataset(csv_path=str(path), image_root=str(tmp_path / "images"))
    assert len(dataset) == len(train)
    for index, pair in enumerate(train):
        sample = dataset[index]
        assert PairRow(**{k: sample["meta"][k] for k in ("img1", "img2", "score1", "score2")},
                       label=PAIR_LABELS[sample["label"]]) == pair
        assert sample["image"][0].getpixel((0, 0)) == colors[pair.img1]
    with pytest.raises(ValueError, match="label 'Better'"):
        write_pair_csv([("a", "b", 1.0, 2.0, "Better")], tmp_path / "bad.csv")
