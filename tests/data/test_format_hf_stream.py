"""Hugging Face streaming (``streaming=true``): equal shares per rank and worker, a seeded order per epoch, exact
resume at any position (rows before it read, not decoded), stable ids without an id column, named errors; and
`mmtrain train` streams the tiny demo from a ``save_to_disk`` folder, killed (-9) and resumed exactly."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import datasets
import pytest

from mmtrain.data.formats import hf_datasets
from mmtrain.data.formats.hf_stream import HFStreamDataset, hf_source
from mmtrain.data.resumable import KeyedIterable, ResumableLoader

from .test_format_hf_datasets import COLUMNS, demo, saved  # noqa: F401 - the demo as a save_to_disk folder

BATCH = 3
NAMES = ["a", "b"]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """22 rows of text (no id column) in a save_to_disk folder, and the same rows as two parquet files."""
    rows = datasets.Dataset.from_dict({"text": [f"t{i:02d}" for i in range(22)], "label": [i % 2 for i in range(22)]},
                                      features=datasets.Features({"text": datasets.Value("string"),
                                                                  "label": datasets.ClassLabel(names=NAMES)}))
    datasets.DatasetDict({"train": rows}).save_to_disk(str(tmp_path / "saved"))
    rows.select(range(11)).to_parquet(str(tmp_path / "a.parquet"))
    rows.select(range(11, 22)).to_parquet(str(tmp_path / "b.parquet"))
    return tmp_path


def stream(folder: Path, **kwargs: object) -> HFStreamDataset:
    settings = dict(source=str(folder / "saved"), modalities=["text"], num_shards=4, shuffle_buffer=5, seed=3,
                    batch_size=BATCH)
    return HFStreamDataset(**{**settings, **kwargs})  # type: ignore[arg-type]


def texts(items: list) -> list[str]:
    return [sample["text"] for _, sample in items]


def loader(data: HFStreamDataset, workers: int) -> ResumableLoader:
    data.set_epoch(1)
    return ResumableLoader(KeyedIterable(data), batch_size=BATCH, num_workers=workers, collate_fn=texts)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_stream_yields_exactly_the_rest_of_the_epoch(folder: Path, workers: int) -> None:
    data = stream(folder)
    whole = list(loader(data, workers))
    assert len(data) == 22 and sum(map(len, whole)) == 22 and len(whole) == 8
    if not workers:  # one reader over whole shards: every row once, shuffled
        assert sorted(t for b in whole for t in b) == [f"t{i:02d}" for i in range(22)]
        assert [t for b in whole for t in b] != sorted(t for b in whole for t in b)
    for done in range(len(whole) + 1):
        resumed = loader(stream(folder), workers)
        resumed.set_position(1, done)
        assert resumed.discard == 0  # by plan: no batch decoded and dropped
        assert list(resumed) == whole[done:], f"resumed after {done} batches with {workers} workers"
    data.set_epoch(2)  # another order
    again = list(ResumableLoader(KeyedIterable(data), batch_size=BATCH, num_workers=workers, collate_fn=texts))
    assert again != whole and sum(map(len, again)) == 22


def test_ranks_get_equal_shares_and_ids_are_stable(folder: Path) -> None:
    shares = [list(stream(folder, world_size=2, rank=r)) for r in (0, 1)]
    assert [len(s) for s in shares] == [11, 11]
    seen = Counter(s["text"] for share in shares for s in share)
    assert sum(seen.values()) == 22 and len(seen) >= 18  # whole shards per rank: a short part starts again
    ids = {s["text"]: s["id"] for share in shares for s in share}
    later = stream(folder, world_size=2, rank=0)
    later.set_epoch(5)
    assert all(ids.get(s["text"], s["id"]) == s["id"] and s["id"].startswith("row-") for s in later)
    assert {s["label"] for share in shares for s in share} == {0, 1}


def test_parquet_files_stream_with_a_given_size_and_errors_are_named(folder: Path) -> None:
    files = [str(folder / "a.parquet"), str(folder / "b.parquet")]
    with pytest.raises(ValueError, match=r"does not state its size; give data.train.samples_per_epoch"):
        hf_source(builder="parquet", data_files=files, modalities=["text"], streaming=True)
    data = hf_source(builder="parquet", data_files=files, modalities=["text"], streaming=True, samples_per_epoch=22,
                     label_names=NAMES)
    assert isinstance(data, HFStreamDataset) and sorted(s["text"] for s in data) == [f"t{i:02d}" for i in range(22)]
    with pytest.raises(ValueError, match="samples_per_epoch applies to streaming=true only"):
        hf_source(source=str(folder / "saved"), modalities=["text"], samples_per_epoch=10)
    assert isinstance(hf_source(source=str(folder / "saved"), modalities=["text"]), hf_datasets.HFDataset)
    with pytest.raises(ValueError, match=r"columns \{'text': 'caption'\} name columns it does not have"):
        stream(folder, columns={"text": "caption"})
    datasets.load_from_disk(str(folder / "saved"))["train"].select(range(2)).save_to_disk(str(folder / "two"))
    with pytest.raises(ValueError, match=r"reader 3 of 4 \(ranks x workers\) gets no rows"):
        list(stream(folder, source=str(folder / "two"), samples_per_epoch=8, world_size=4, rank=3))


@pytest.mark.long
def test_the_demo_streams_and_a_killed_run_resumes_exactly(saved: Path, tmp_path: Path) -> None:  # noqa: F811
    """2 workers, killed (-9) at step 6 of 8: resumed from step 5, after batch 1 of epoch 2 (the other worker next in turn),
    the stream ends bit-identical."""
    from _multiproc import assert_killed_run_resumes_exactly

    command = ["experiment=demo", "data=hf_datasets", f"data.train.source={saved}", "data.train.streaming=true",
               *(f"data.train.columns.{k}={v}" for k, v in COLUMNS.items()), "data.num_workers=2", "data.batch_size=4",
               "data.processor.num_frames=4", "trainer.max_epochs=2", "callbacks.progress=null",
               "evaluate_unimodal=false", "callbacks.resume_checkpoint.every_n_train_steps=1"]
    assert_killed_run_resumes_exactly(command, cwd=tmp_path, kill_at=6, resumed_from="last-step0000005.ckpt",
                                      name="hf_stream_killed")
