"""A streamed source (parquet) resumes at its position by plan: with 0, 2 or 3 workers, uneven worker blocks and
any position, the resumed pass yields exactly the rest of the epoch's batches, in order, and reads no row
before the position (mmtrain.data.stream_plan)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmtrain.data.formats.parquet import ParquetDataset
from mmtrain.data.resumable import KeyedIterable, ResumableLoader
from mmtrain.data.stream_plan import delivered

from .test_format_parquet import _write

BATCH = 3


class Recording(ParquetDataset):
    """Records the rows it decodes (in the main process: ``num_workers=0``)."""

    decoded: list[str]

    def _sample(self, columns, offset, unit, epoch, layout):  # type: ignore[no-untyped-def]
        sample = super()._sample(columns, offset, unit, epoch, layout)
        self.decoded.append(sample["id"])
        return sample


def ids(items: list) -> list[str]:
    return [sample["id"] for _, sample in items]


def stream(files: list[Path], workers: int, cls: type = ParquetDataset) -> tuple[ParquetDataset, ResumableLoader]:
    data = cls(files=[str(f) for f in files], shuffle=True, seed=3, batch_size=BATCH)
    data.set_epoch(1)
    return data, ResumableLoader(KeyedIterable(data), batch_size=BATCH, num_workers=workers, collate_fn=ids)


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    """23 rows in groups of 4 (the last 3): 8 batches of 3, worker blocks of 4+4 or 3+3+2 batches."""
    return [_write(tmp_path / "a.parquet", 11), _write(tmp_path / "b.parquet", 12, start=11)]


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_a_resumed_stream_yields_exactly_the_rest_of_the_epoch(files: list[Path], workers: int) -> None:
    whole = list(stream(files, workers)[1])
    assert len(whole) == 8 and sorted(i for b in whole for i in b) == [f"s{i:03d}" for i in range(23)]
    for done in range(len(whole) + 1):
        data, loader = stream(files, workers)
        loader.set_position(1, done)
        assert loader.discard == 0  # seeks by plan: nothing decoded and dropped
        assert list(loader) == whole[done:], f"resumed after {done} batches with {workers} workers"
        assert list(loader) == whole  # the next pass is whole again


def test_a_resumed_stream_reads_no_row_before_its_position(files: list[Path]) -> None:
    data, loader = stream(files, 0, Recording)
    data.decoded = []
    whole = list(loader)
    data.decoded = []
    loader.set_position(1, 5)
    rest = list(loader)
    assert rest == whole[5:] and data.decoded == [i for b in rest for i in b]


@pytest.mark.parametrize("batches, done, expected", [
    ([4, 4], 0, ([0, 0], 0)), ([4, 4], 3, ([2, 1], 1)), ([3, 3, 2], 7, ([3, 2, 2], 1)),
    ([3, 3, 2], 8, ([3, 3, 2], 0)), ([1, 3], 3, ([1, 2], 1)), ([3, 1], 3, ([2, 1], 0))])
def test_deliveries_follow_the_loader_round_robin(batches: list[int], done: int, expected: tuple) -> None:
    assert delivered(batches, done) == expected


def test_a_position_outside_the_epoch_is_refused() -> None:
    with pytest.raises(ValueError, match=r"position 9 is outside an epoch of 8 batches"):
        delivered([4, 4], 9)
