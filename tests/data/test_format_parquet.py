"""ParquetDataset: streaming by row group, sharding over workers and ranks, epochs, skips, memory."""

from __future__ import annotations

import gc
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torch.utils.data import DataLoader

from mmtrain.data.formats.parquet import ParquetDataset
from mmtrain.data.skips import SkippedSample

from ._media import assert_skip, image_bytes, noise_png

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def _color(i: int) -> tuple[int, int, int]:
    return COLORS[i % len(COLORS)]


def _write(path: Path, rows: int, *, start: int = 0, group: int = 4, label: bool = False,
           image: list[bytes | None] | None = None) -> Path:
    data = {
        "sample_id": [f"s{start + i:03d}" for i in range(rows)],
        "image_bytes": image if image is not None else [image_bytes(_color(start + i)) for i in range(rows)],
        "caption": [f"caption {start + i}" for i in range(rows)],
    }
    if label:
        data["label"] = [["cat", "dog"][(start + i) % 2] for i in range(rows)]
    pq.write_table(pa.table(data), path, row_group_size=group)
    return path


@pytest.fixture
def shards(tmp_path: Path) -> list[Path]:
    """Two files: 10 rows (groups 4,4,2) and 14 rows (groups 4,4,4,2)."""
    return [_write(tmp_path / "train-0.parquet", 10), _write(tmp_path / "train-1.parquet", 14, start=10)]


def _ids(items: list) -> list[str]:
    return [item["id"] if isinstance(item, dict) else item.id for item in items]


def test_rows_become_image_text_samples(shards: list[Path]) -> None:
    dataset = ParquetDataset(files=str(shards[0].parent / "train-*.parquet"))
    assert dataset.label_names == [] and len(dataset) == 24
    samples = list(dataset)
    assert _ids(samples) == [f"s{i:03d}" for i in range(24)]
    sample = samples[13]
    assert set(sample) == {"id", "image", "text", "meta"}
    assert sample["image"].mode == "RGB" and sample["image"].size == (12, 10)
    assert sample["image"].getpixel((3, 3)) == _color(13)
    assert sample["text"] == "caption 13"
    assert sample["meta"] == {"file": str(shards[1]), "row": 3}
    assert _ids(ParquetDataset(files=[str(shards[1]), str(shards[0])])) [:2] == ["s010", "s011"]


def test_question_answer_struct_image_label_and_default_ids(tmp_path: Path) -> None:
    struct = pa.array([{"bytes": image_bytes(_color(i)), "path": None} for i in range(5)],
                      type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    table = pa.table({"image": struct, "question": [f"q{i}" for i in range(5)], "answer": [f"a{i}" for i in range(5)],
                      "label": [1, 0, 1, 0, 1]})
    pq.write_table(table, tmp_path / "qa.parquet", row_group_size=2)
    dataset = ParquetDataset(files=str(tmp_path / "qa.parquet"), text_column="question", target_column="answer",
                             label_column="label", label_names=["no", "yes"])
    samples = list(dataset)
    assert _ids(samples) == [f"qa.parquet:{i}" for i in range(5)]
    assert samples[2]["text"] == "q2" and samples[2]["target_text"] == "a2" and samples[2]["label"] == 1
    assert samples[2]["image"].getpixel((0, 0)) == _color(2)
    text_only = next(iter(ParquetDataset(files=str(tmp_path / "qa.parquet"), text_column="question",
                                         target_column="answer", modalities=["text"])))
    assert set(text_only) == {"id", "text", "target_text", "meta"}


def test_two_workers_yield_every_row_once(shards: list[Path]) -> None:
    dataset = ParquetDataset(files=[str(p) for p in shards], shuffle=True, seed=3)
    loader = DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=list)
    ids = [i for batch in loader for i in _ids(batch)]
    assert Counter(ids) == Counter(f"s{i:03d}" for i in range(24))


@pytest.mark.parametrize("workers", [0, 2])
def test_ranks_and_workers_partition_the_rows(shards: list[Path], workers: int) -> None:
    seen: list[str] = []
    lengths = []
    for rank in (0, 1):
        dataset = ParquetDataset(files=[str(p) for p in shards], rank=rank, world_size=2, shuffle=True, seed=1)
        loader = DataLoader(dataset, batch_size=4, num_workers=workers, collate_fn=list)
        rank_ids = [i for batch in loader for i in _ids(batch)]
        assert len(rank_ids) == len(dataset)  # len() is this rank's share, from parquet metadata
        lengths.append(len(dataset))
        seen += rank_ids
    assert Counter(seen) == Counter(f"s{i:03d}" for i in range(24))
    assert sum(lengths) == 24 and min(lengths) > 0


def test_epoch_shuffle_is_deterministic_and_changes_per_epoch(shards: list[Path]) -> None:
    def order(epoch: int, seed: int = 0) -> list[str]:
        dataset = ParquetDataset(files=[str(p) for p in shards], shuffle=True, seed=seed)
        dataset.set_epoch(epoch)
        return _ids(list(dataset))

    assert order(0) == order(0) and sorted(order(0)) == sorted(order(1))
    assert order(0) != order(1) and order(0) != order(0, seed=1)
    plain = ParquetDataset(files=[str(p) for p in shards])
    plain.set_epoch(5)
    assert _ids(list(plain)) == [f"s{i:03d}" for i in range(24)]


def test_persistent_workers_see_set_epoch(shards: list[Path]) -> None:
    dataset = ParquetDataset(files=[str(p) for p in shards], shuffle=True, seed=2)
    loader = DataLoader(dataset, batch_size=24, num_workers=2, collate_fn=list, persistent_workers=True)
    first = [i for batch in loader for i in _ids(batch)]
    dataset.set_epoch(1)
    second = [i for batch in loader for i in _ids(batch)]
    fresh = ParquetDataset(files=[str(p) for p in shards], shuffle=True, seed=2)
    fresh.set_epoch(1)
    expected = [i for batch in DataLoader(fresh, batch_size=24, num_workers=2, collate_fn=list) for i in _ids(batch)]
    assert second == expected and second != first


def test_text_dropout_is_deterministic_per_seed_epoch_and_row(tmp_path: Path) -> None:
    path = _write(tmp_path / "many.parquet", 200, group=50)

    def texts(p: float, epoch: int = 0, seed: int = 0) -> list[str]:
        dataset = ParquetDataset(files=str(path), text_dropout=p, seed=seed, modalities=["text"])
        dataset.set_epoch(epoch)
        return [s["text"] for s in dataset]

    dropped = [t == "" for t in texts(0.3)]
    assert 30 <= sum(dropped) <= 90
    assert texts(0.3) == texts(0.3)
    assert texts(0.3, epoch=1) != texts(0.3) and texts(0.3, seed=9) != texts(0.3)
    assert "" not in texts(0.0) and set(texts(1.0)) == {""}
    shuffled = ParquetDataset(files=str(path), text_dropout=0.3, shuffle=True, modalities=["text"])
    by_id = {s["id"]: s["text"] for s in shuffled}  # the row decides, not its position in the pass
    assert [by_id[f"s{i:03d}"] == "" for i in range(200)] == dropped


def test_broken_image_bytes_become_skips_naming_file_and_row(tmp_path: Path) -> None:
    good = image_bytes((9, 9, 9), fmt="JPEG")
    images = [good, good[: len(good) // 2], b"", bytes(range(200)), None, good]
    path = _write(tmp_path / "broken.parquet", 6, image=images, group=3)
    items = list(ParquetDataset(files=str(path)))
    assert isinstance(items[0], dict) and isinstance(items[5], dict)
    for row in range(1, 5):
        assert_skip(items[row], f"{path} row {row} column image_bytes", "image")
        assert items[row].id == f"s{row:03d}"
    assert all(isinstance(i, SkippedSample) or i["image"].size == (12, 10) for i in items)


def test_annotation_errors(tmp_path: Path, shards: list[Path]) -> None:
    with pytest.raises(FileNotFoundError, match="absent-\\*.parquet matches no file"):
        ParquetDataset(files=str(tmp_path / "absent-*.parquet"))
    with pytest.raises(FileNotFoundError, match="gone.parquet does not exist"):
        ParquetDataset(files=[str(tmp_path / "gone.parquet")])
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="junk.parquet: not a readable parquet file"):
        ParquetDataset(files=str(tmp_path / "junk.parquet"))
    with pytest.raises(ValueError, match="train-0.parquet: no column 'question'"):
        ParquetDataset(files=str(shards[0]), text_column="question")
    with pytest.raises(ValueError, match="no image column 'pixels'"):
        ParquetDataset(files=str(shards[0]), image_column="pixels")
    labelled = _write(tmp_path / "labelled.parquet", 7, label=True)
    with pytest.raises(ValueError, match="labelled.parquet row 1: label 'dog' is not one of \\['cat', 'bird'\\]"):
        ParquetDataset(files=str(labelled), label_column="label", label_names=["cat", "bird"])
    with pytest.raises(ValueError, match="give label_column and label_names together"):
        ParquetDataset(files=str(labelled), label_column="label")
    assert [s["label"] for s in ParquetDataset(files=str(labelled), label_column="label",
                                               label_names=["cat", "dog"])] == [0, 1, 0, 1, 0, 1, 0]


def test_reading_holds_one_row_group_not_the_file(tmp_path: Path) -> None:
    rows, group = 48, 4
    images = [noise_png(i) for i in range(rows)]  # ~28 KB each, incompressible
    path = _write(tmp_path / "big.parquet", rows, image=images, group=group)
    group_bytes = sum(len(b) for b in images[:group])
    file_bytes = path.stat().st_size
    assert file_bytes > 10 * group_bytes
    gc.collect()
    baseline = pa.total_allocated_bytes()
    peak = 0
    count = 0
    for _ in ParquetDataset(files=str(path), shuffle=True):
        peak = max(peak, pa.total_allocated_bytes() - baseline)
        count += 1
    assert count == rows
    assert peak < 1.5 * group_bytes, (peak, group_bytes, file_bytes)  # one row group of image bytes at a time


def _rank_batches(files: list[Path], rank: int, world: int, workers: int, epoch: int = 0,
                  **kwargs: object) -> tuple[ParquetDataset, list[list[str]]]:
    dataset = ParquetDataset(files=[str(p) for p in files], rank=rank, world_size=world, seed=4, **kwargs)
    dataset.set_epoch(epoch)
    loader = DataLoader(dataset, batch_size=3, num_workers=workers, collate_fn=list)
    return dataset, [_ids(batch) for batch in loader]


@pytest.fixture
def uneven(tmp_path: Path) -> list[Path]:
    """23 rows in 7 row groups (4,4,2 and 4,4,4,1): no split by row group is even over 2 ranks."""
    return [_write(tmp_path / "a.parquet", 10), _write(tmp_path / "b.parquet", 13, start=10)]


@pytest.mark.parametrize("workers", [0, 2])
def test_even_shards_give_every_rank_the_same_rows_and_batches(uneven: list[Path], workers: int,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    # Under DDP a rank with one batch more waits forever in the gradient all-reduce: the train split
    # (shuffle, so even_shards by default) gives each rank rows // world rows, in the same batches.
    for epoch in range(3):
        with caplog.at_level("INFO", logger="mmtrain.data.formats.parquet"):
            shards = [_rank_batches(uneven, rank, 2, workers, epoch, shuffle=True) for rank in (0, 1)]
        assert [d.even_shards for d, _ in shards] == [True, True]
        assert [len(d) for d, _ in shards] == [11, 11] and shards[0][0].rows_left_out() == 1
        assert [len(batches) for _, batches in shards] == [len(shards[0][1])] * 2
        sizes = [[len(b) for b in batches] for _, batches in shards]
        assert sizes[0] == sizes[1], "the same batches on both ranks"
        rows = [i for _, batches in shards for batch in batches for i in batch]
        assert len(rows) == 22 and len(set(rows)) == 22, "each row at most once per epoch"
    if workers == 0:  # (worker processes log on their own)
        assert "1 of 23 rows left out so that each of the 2 ranks yields 11 rows" in caplog.text
    left_out = []
    for epoch in range(4):
        shards = [_rank_batches(uneven, rank, 2, 0, epoch, shuffle=True)[1] for rank in (0, 1)]
        seen = {i for batches in shards for batch in batches for i in batch}
        left_out += sorted({f"s{i:03d}" for i in range(23)} - seen)
    assert len(left_out) == 4 and len(set(left_out)) > 1, "the left-out row changes with the epoch's shuffle"


def test_evaluation_splits_keep_every_row_split_by_row_group(uneven: list[Path]) -> None:
    # Without shuffle (val/test) whole row groups go to the ranks: nothing is left out, counts may differ.
    shards = [_rank_batches(uneven, rank, 2, 0) for rank in (0, 1)]
    assert [d.even_shards for d, _ in shards] == [False, False]
    counts = [len(d) for d, _ in shards]
    assert counts == [11, 12] and shards[0][0].rows_left_out() == 0
    rows = [i for _, batches in shards for batch in batches for i in batch]
    assert sorted(rows) == [f"s{i:03d}" for i in range(23)]
    forced = [_rank_batches(uneven, rank, 2, 0, even_shards=True)[0] for rank in (0, 1)]
    assert [len(d) for d in forced] == [11, 11]


def test_even_shards_refuse_more_ranks_than_rows(tmp_path: Path) -> None:
    dataset = ParquetDataset(files=str(_write(tmp_path / "few.parquet", 3)), rank=0, world_size=4, shuffle=True)
    with pytest.raises(ValueError, match="3 rows .* cannot be shared by 4 processes"):
        len(dataset)


@pytest.mark.parametrize(("world", "size"), [(1, 5), (2, 4)])
def test_batch_size_makes_worker_shards_whole_batches(uneven: list[Path], world: int, size: int) -> None:
    # Lightning ends an epoch of a sized stream after len(loader) = ceil(len / batch_size) batches; two
    # workers each ending on a partial batch make one more (12 + 11 rows in 5s: 3 + 3 > 5 batches),
    # whose rows would never be trained on.
    for rank in range(world):
        plain = ParquetDataset(files=[str(p) for p in uneven], rank=rank, world_size=world, shuffle=True)
        aligned = ParquetDataset(files=[str(p) for p in uneven], rank=rank, world_size=world, shuffle=True,
                                 batch_size=size)
        for dataset, exact in ((plain, False), (aligned, True)):
            loader = DataLoader(dataset, batch_size=size, num_workers=2, collate_fn=list)
            batches = list(loader)
            assert sum(map(len, batches)) == len(dataset) == 23 // world
            assert (len(batches) == len(loader)) is exact, (world, rank, exact, len(batches), len(loader))
