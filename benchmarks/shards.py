"""Packed shards (``shards.source=``) against reading the media files directly, and against the other engines.

Data: the built-in demo (``spoken_digits`` ``small``: 1200 train segments of 300 mp4 files, video + audio + text)
under ``$TMPDIR/mmtrain-bench-data``, packed once with ``mmtrain data pack``'s writer (shards of 2 MB).

Rows with goals:

* resume position: time from a resumed loader (``ResumableLoader.set_position``, what ``resume=`` does after the
  checkpoint loads) to its first batch, 2 workers, batch 8, at 1x (1 batch), 10x and 100x (100 batches, 800
  samples) into an epoch. Goal: 100x / 1x <= 1.2 (nothing before the position is read).
* parquet stream resume: the demo's parquet view (``data=parquet``, row groups of 64, batch 8, 2 workers), time
  to the first batch 100 batches vs 1 batch into an epoch, resumed by plan. Goal <= 1.2. Reported beside it: the
  same by decoding and dropping, as streams resumed before.
* throughput: samples/s decoding video + audio of the same 400 samples in the same shuffled order from the shards
  and from the mp4 files (``Mp4LabelJsonDataset``), one process. Goal: >= 0.8 of the files' rate.
* RSS vs size: peak RSS of a fresh process reading 600 random samples from the pack and from a 10x pack (the same
  shards listed ten times). Goal: 10x / 1x <= 1.2 (per-shard indexes are read on use, 64 kept).

Report-only rows: ``data=hf_datasets`` streaming (``streaming=true``) of the parquet view resumed 100 vs 1 batch
in (its readers skip the rows before the position undecoded, so its cost grows with the position); the same shards over HTTP (aiohttp) and S3 (moto), both on 127.0.0.1; and the engines compared
on the same tars: the ``webdataset`` library reads them in order (resume = skip samples: its cost grows with the
position), Hugging Face ``datasets`` streams them (``load_dataset("webdataset", streaming=True)``; resume through
``state_dict``). litdata is not measured: it requires torchvision, which pip resolves to a CUDA torch build beside
the CPU torch wheel this stack pins.

Run: ``.venv/bin/python benchmarks/shards.py [--quick]``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import DATA_ROOT, Result, goal_row, run_child, standalone  # noqa: E402

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
MODALITIES = ["video", "audio", "text"]


def _direct():
    from mmtrain.data.demo import ensure_demo
    from mmtrain.data.formats.mp4_label_json import Mp4LabelJsonDataset

    root = ensure_demo(DATA_ROOT / "spoken_digits", size="small")
    return Mp4LabelJsonDataset(video_dir=str(root / "videos" / "train"), label_dir=str(root / "labels" / "train"),
                               label_names=NAMES, num_frames=4, modalities=MODALITIES)


def packed() -> Path:
    """The demo's train split packed (once) under the bench data root; also a 10x root listing its shards 10x."""
    from mmtrain.data.shards.pack import pack_split

    out = DATA_ROOT / "shards"
    if not (out / "train" / "shards.json").is_file():
        counts = pack_split(_direct(), out / "train", shard_bytes=2 * 2**20, num_workers=2, split="train",
                            ledger=out / "skipped.jsonl", source={"benchmark": "demo small"})
        assert counts["skipped"] == 0, "the demo has no undecodable sample"
    big = out / "train10x"
    if not (big / "shards.json").is_file():
        big.mkdir(parents=True, exist_ok=True)
        root = json.loads((out / "train" / "shards.json").read_text())
        shards = []
        for copy in range(10):
            for shard in root["shards"]:
                name, index = f"c{copy}-{shard['name']}", f"c{copy}-{shard['index']}"
                for src, dst in ((shard["name"], name), (shard["index"], index)):
                    if not (big / dst).exists():
                        os.link(out / "train" / src, big / dst)
                shards.append({**shard, "name": name, "index": index})
        (big / "shards.json").write_text(json.dumps({**root, "samples": root["samples"] * 10, "shards": shards}))
    return out


def first_batch_seconds(positioned, repeats: int) -> float:
    """Median seconds from ``iter(loader)`` to its first batch, over ``repeats`` fresh loaders from ``positioned()``
    (each already set to its resume position)."""
    tries = []
    for _ in range(repeats):
        loader = positioned()
        began = time.perf_counter()
        iterator = iter(loader)
        next(iterator)
        tries.append(time.perf_counter() - began)
        del iterator, loader
    return sorted(tries)[len(tries) // 2]


def _at(loader, position: int):
    loader.set_position(0, position)
    return loader


def resume_rows(out: Path, quick: bool) -> list[Result]:
    from mmtrain.config.compose import compose_config
    from mmtrain.config.targets import runtime_prefixes
    from mmtrain.engine.build import build_data

    cfg = compose_config(["experiment=demo", f"shards.source={out}", "data.batch_size=8", "data.num_workers=2",
                          "data.val=null", "data.test=null"])
    datamodule = build_data(cfg, runtime_prefixes())
    times = {position: first_batch_seconds(lambda: _at(datamodule.train_dataloader(), position), 2 if quick else 5)
             for position in (1, 10, 100)}
    return [Result(f"resume at {p} batches: first batch (2 workers)", f"{times[p] * 1e3:.0f} ms",
                   f"{times[1] * 1e3:.0f} ms at 1", times[p] / times[1]) for p in (10,)] + [
        goal_row("resume at 100x (800 samples) vs 1x into an epoch: time to the first batch",
                 f"{times[100] * 1e3:.0f} ms", f"{times[1] * 1e3:.0f} ms", times[100] / times[1], 1.2, at_most=True)]


def parquet_rows(quick: bool) -> list[Result]:
    """The demo's parquet view streamed (row groups of 64, batch 8, 2 workers): time to the first batch resumed
    1 and 100 batches in, by plan (what ``resume=`` does) and by decoding and dropping (what it did before)."""
    from mmtrain.data.demo import ensure_demo
    from mmtrain.data.formats.parquet import ParquetDataset
    from mmtrain.data.resumable import KeyedIterable, ResumableLoader

    root = ensure_demo(DATA_ROOT / "spoken_digits", size="small")
    def positioned(how: str, position: int):
        data = ParquetDataset(files=str(root / "parquet" / "train.parquet"), shuffle=True, batch_size=8)
        loader = ResumableLoader(KeyedIterable(data), batch_size=8, num_workers=2, collate_fn=_ids)
        if how == "plan":
            return _at(loader, position)
        loader.discard = position
        return loader

    times = {(how, position): first_batch_seconds(lambda: positioned(how, position), 2 if quick else 5)
             for how in ("plan", "drop") for position in (1, 100)}
    return [goal_row("parquet stream resume at 100x vs 1x: time to the first batch (by plan)",
                     f"{times['plan', 100] * 1e3:.0f} ms", f"{times['plan', 1] * 1e3:.0f} ms",
                     times["plan", 100] / times["plan", 1], 1.2, at_most=True),
            Result("parquet stream resume at 100x vs 1x, decode and drop (before)",
                   f"{times['drop', 100] * 1e3:.0f} ms", f"{times['drop', 1] * 1e3:.0f} ms",
                   times["drop", 100] / times["drop", 1])]


def hf_stream_rows(quick: bool) -> list[Result]:
    """The same parquet view through Hugging Face streaming (``data.train.streaming=true``, 2 workers, batch 8):
    time to the first batch resumed 1 and 100 batches in (each reader skips the rows it delivered, undecoded)."""
    from mmtrain.data.demo import ensure_demo
    from mmtrain.data.formats.hf_stream import HFStreamDataset
    from mmtrain.data.resumable import KeyedIterable, ResumableLoader

    root = ensure_demo(DATA_ROOT / "spoken_digits", size="small")
    def positioned(position: int):
        data = HFStreamDataset(builder="parquet", data_files=str(root / "parquet" / "train.parquet"),
                               modalities=["image", "text"], columns={"id": "sample_id", "image": "image_bytes",
                                                                      "text": "caption"},
                               label_names=NAMES, samples_per_epoch=1200, batch_size=8, shuffle_buffer=64)
        return _at(ResumableLoader(KeyedIterable(data), batch_size=8, num_workers=2, collate_fn=_ids), position)

    times = {position: first_batch_seconds(lambda: positioned(position), 2 if quick else 5) for position in (1, 100)}
    return [Result("HF streaming (parquet view) resume at 100x vs 1x: time to the first batch (rows read, not decoded)",
                   f"{times[100] * 1e3:.0f} ms", f"{times[1] * 1e3:.0f} ms", times[100] / times[1])]


def _ids(items: list) -> list[str]:
    return [sample["id"] for _, sample in items]


def _rate(dataset, order: list[int]) -> float:
    began = time.perf_counter()
    for index in order:
        dataset[index]
    return len(order) / (time.perf_counter() - began)


def throughput_rows(out: Path, quick: bool) -> list[Result]:
    import random

    from _servers import http_server, s3_server

    from mmtrain.data.formats.shards import ShardsDataset

    direct = _direct()
    order = random.Random(0).sample(range(len(direct)), 150 if quick else 400)

    def shards(source: str, **options):
        return ShardsDataset(source=source, split="train", modalities=MODALITIES, num_frames=4, **options)

    local = shards(str(out))
    _rate(local, order[:20]), _rate(direct, order[:20])  # warm the page cache and the indexes alike
    files, packed_rate = _rate(direct, order), _rate(local, order)
    rows = [goal_row("throughput: shards vs the mp4 files (decode video + audio, 1 process)",
                     f"{packed_rate:.0f} samples/s", f"{files:.0f} samples/s", packed_rate / files, 0.8, at_most=False)]
    with http_server(out) as url:
        rate = _rate(shards(url), order)
    rows.append(Result("throughput: shards over HTTP (aiohttp, 127.0.0.1)", f"{rate:.0f} samples/s",
                       f"{files:.0f} samples/s (files)", rate / files))
    with s3_server(out) as endpoint:
        rate = _rate(shards("s3://data", storage_options={"endpoint_url": endpoint}), order)
    rows.append(Result("throughput: shards over S3 (moto, 127.0.0.1)", f"{rate:.0f} samples/s",
                       f"{files:.0f} samples/s (files)", rate / files))
    return rows


RSS_CHILD = """
import json, random, sys
import psutil
from mmtrain.data.formats.shards import ShardsDataset
data = ShardsDataset(source=sys.argv[1], split=sys.argv[2], modalities=["video", "audio", "text"], num_frames=4)
for index in random.Random(0).sample(range(len(data)), int(sys.argv[3])):
    data[index]
status = open("/proc/self/status").read()
peak = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) * 1024
print(json.dumps({"peak": peak, "samples": len(data)}))
"""


def rss_rows(out: Path, quick: bool) -> list[Result]:
    count = "200" if quick else "600"
    small = run_child(RSS_CHILD, str(out), "train", count)
    big = run_child(RSS_CHILD, str(out), "train10x", count)
    return [goal_row(f"peak RSS reading {count} samples: {big['samples']} vs {small['samples']} samples packed",
                     f"{big['peak'] / 2**20:.0f} MiB", f"{small['peak'] / 2**20:.0f} MiB", big["peak"] / small["peak"],
                     1.2, at_most=True)]


def engine_rows(out: Path, quick: bool) -> list[Result]:
    """The same tars read by the webdataset library and by Hugging Face streaming (raw bytes, no decoding)."""
    import datasets
    import webdataset

    tars = sorted(str(p) for p in (out / "train").glob("*.tar"))
    rows = []
    for position in (8, 800):
        began = time.perf_counter()
        stream = iter(webdataset.WebDataset(tars, shardshuffle=False))
        for _ in range(position):  # its resume: skip what was trained (read, then dropped)
            next(stream)
        next(stream)
        rows.append(Result(f"webdataset: resume at {position} samples (skip, raw bytes)",
                           f"{(time.perf_counter() - began) * 1e3:.0f} ms", "", None))
    def load():  # bytes, not decoded (its video decoding needs torchcodec)
        return datasets.load_dataset("webdataset", data_files={"train": tars}, split="train", streaming=True).decode(False)

    stream = load()
    for position in (8, 800):
        iterator = iter(stream)
        for _ in range(position):
            next(iterator)
        state = stream.state_dict()
        began = time.perf_counter()
        stream.load_state_dict(state)
        next(iter(stream))
        rows.append(Result(f"HF datasets streaming: resume at {position} samples (state_dict)",
                           f"{(time.perf_counter() - began) * 1e3:.0f} ms", "", None))
        stream = load()
    return rows


def run(quick: bool = False) -> list[Result]:
    out = packed()
    return (resume_rows(out, quick) + parquet_rows(quick) + hf_stream_rows(quick) + throughput_rows(out, quick)
            + rss_rows(out, quick) + engine_rows(out, quick))


def main() -> int:
    return standalone("packed shards", run, "fewer samples and repeats")


if __name__ == "__main__":
    raise SystemExit(main())
