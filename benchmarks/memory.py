"""Memory benchmark: peak RSS of a training run on streamed parquet, 1x vs 10x the rows.

Data: the parquet view of the built-in demo (``spoken_digits`` ``small``: ``parquet/train.parquet``
1200 rows in row groups of 64, val and test 200 rows each; image bytes + caption + label), built
once under ``$TMPDIR/mmtrain-bench-data`` (``--data-root``). Its images are 32x32 PNGs of ~0.4 KB,
so the whole 10x train file would be ~5 MB, too little next to a ~600 MB process for the ratio to
tell streaming from loading everything. So every image is made photo-sized first: upscaled to
224x224 RGB with fixed mild noise, JPEG quality 90 (~25 KB a row; the processor still resizes to 16
px). The 1x set is these rows (``--quick``: the first 10 train row groups, 640 rows); the 10x set
has the train rows 10 times (copy k > 0 of a row gets the id ``<sample_id>~k``), written row group
by row group, so the row groups keep the demo's sizes; val and test (streamed the same way) are the
same 200 rows each in both sets, to keep the run short.
A reader that held the 10x train split in memory would add at least its Arrow size (printed in the
last row) to the 10x peak.

Training: ``python -m mmtrain.app.cli train data=parquet ...`` in a fresh subprocess per size, exactly
like tests/integration/test_streamed_training.py (tiny ViT image + tiny BERT text encoders, label
column ``label``), ``data.num_workers=2``, 1 epoch, then the usual re-validation and test of
``mmtrain train`` (``evaluate_unimodal=false``, no progress bar, no TensorBoard logger).

Measured per run:

* tree PSS peak (the goal): the maximum over time of the summed PSS (proportional set size: each
  shared page split among the processes sharing it) of the training process and all its
  descendants (the DataLoader workers of train and val), polled with psutil every 50 ms: the
  memory the whole job really occupies. Goal: peak(10x) / peak(1x) <= 1.2.
* tree RSS peak: the same with RSS, which counts pages the forked workers share with the main
  process once per process (so well above the PSS sum; context).
* main peak: the training process's own high-water RSS (``VmHWM`` of ``/proc/<pid>/status``, a
  high-water mark the kernel keeps, read at each poll; workers not included). Not ``ru_maxrss``:
  Linux carries the launching process's high-water mark into a child across fork + exec, so
  under ``run_all.py`` (a parent grown to 1.1 GiB by the step benchmark) it read 1164 MiB.

Why the peak used to jump: CPython's full garbage collection writes to every object it walks, so
one full collection in the training process while its 4 forked workers were alive copied ~120 MiB
of shared pages (tree PSS 775 -> 895 MiB, main RSS unchanged), at a moment that varied from run to
run: the ratio ranged 1.02-1.20. mmtrain's loaders now freeze the objects before forking
(``perf.gc_freeze``, ``mmtrain.engine.callbacks.gc_freeze``); peaks 754-787 MiB at both sizes, ratio 0.99-1.04 over three runs.

Run: ``.venv/bin/python benchmarks/memory.py [--quick]``. Exit code 1 when the goal is missed.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/harness.py, when run as a script
from harness import DATA_ROOT, Result, console, goal_row, print_table  # noqa: E402

from mmtrain.data.demo import ensure_demo  # noqa: E402

GOAL = 1.2
SCALE = 10
POLL_SECONDS = 0.05
PHOTO = 224
SPLITS = ("train", "val", "test")
DIGITS = "[zero,one,two,three,four,five,six,seven,eight,nine]"


def photo(data: bytes, seed: int) -> bytes:
    """A demo image as a photo-sized JPEG: 224x224 RGB, fixed noise (sigma 12), quality 95 (~24 KB)."""
    image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((PHOTO, PHOTO), Image.BICUBIC), np.int16)
    noise = np.random.default_rng(seed).normal(0, 12, image.shape)
    out = io.BytesIO()
    Image.fromarray(np.clip(image + noise, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=95)
    return out.getvalue()


def write_photo_sized(source: Path, target: Path, groups: int | None = None) -> None:
    """``source`` (its first ``groups`` row groups) with every ``image_bytes`` made by :func:`photo`,
    same row groups."""
    reader = pq.ParquetFile(source)
    with pq.ParquetWriter(target, reader.schema_arrow) as writer:
        for group in range(min(groups or reader.num_row_groups, reader.num_row_groups)):
            table = reader.read_row_group(group)
            column = table.schema.get_field_index("image_bytes")
            images = [photo(data, zlib.crc32(name.encode())) for data, name in
                      zip(table.column(column).to_pylist(), table.column("sample_id").to_pylist())]
            table = table.set_column(column, "image_bytes", pa.array(images, pa.binary()))
            writer.write_table(table, row_group_size=table.num_rows)


def write_scaled(source: Path, target: Path, copies: int) -> int:
    """``source`` with its rows ``copies`` times (ids ``<id>~k`` for copy k > 0), each source row group
    written as one row group; returns the row count."""
    reader = pq.ParquetFile(source)
    rows = 0
    with pq.ParquetWriter(target, reader.schema_arrow) as writer:
        for copy in range(copies):
            for group in range(reader.num_row_groups):
                table = reader.read_row_group(group)
                if copy:
                    ids = pa.array([f"{i}~{copy}" for i in table.column("sample_id").to_pylist()], pa.string())
                    table = table.set_column(table.schema.get_field_index("sample_id"), "sample_id", ids)
                writer.write_table(table, row_group_size=table.num_rows)
                rows += table.num_rows
    return rows


def make_sets(demo: Path, work: Path, train_groups: int | None = None) -> dict[str, Path]:
    """``{"1x": root, "10x": root}``, each root holding ``parquet/{train,val,test}.parquet``: train
    (its first ``train_groups`` row groups) 1x / 10x, val and test the same in both."""
    roots = {label: work / label for label in ("1x", f"{SCALE}x")}
    for root in roots.values():
        (root / "parquet").mkdir(parents=True)
    for split in SPLITS:
        single = roots["1x"] / "parquet" / f"{split}.parquet"
        write_photo_sized(demo / "parquet" / f"{split}.parquet", single, train_groups if split == "train" else None)
        write_scaled(single, roots[f"{SCALE}x"] / "parquet" / f"{split}.parquet", SCALE if split == "train" else 1)
    return roots


def train_command(root: Path, run_dir: Path, batch_size: int) -> list[str]:
    overrides = [
        "data=parquet", f"data_root={root}", "data.num_workers=2", f"data.batch_size={batch_size}",
        "+data.train.label_column=label", f"+data.train.label_names={DIGITS}",
        "+data.val.label_column=label", "+data.val.label_names=${data.train.label_names}",
        "+data.test.label_column=label", "+data.test.label_names=${data.train.label_names}",
        "model/encoders/image=vit", "~model/encoders/video", "~model/encoders/audio",
        "trainer.max_epochs=1", "callbacks.progress=null", "+trainer.enable_progress_bar=false",
        "logger.tensorboard=null", "evaluate_unimodal=false", f"run_dir={run_dir}",
    ]
    return [sys.executable, "-m", "mmtrain.app.cli", "train", *overrides]


def tree_memory(process: psutil.Process) -> tuple[int, int]:
    """Summed (PSS, RSS) of ``process`` and its descendants, in bytes."""
    pss = rss = 0
    for member in (process, *process.children(recursive=True)):
        try:
            info = member.memory_full_info()
        except psutil.Error:  # a worker that just exited
            continue
        pss, rss = pss + info.pss, rss + info.rss
    return pss, rss


def high_water(pid: int) -> int:
    """``VmHWM`` of ``pid`` (its peak RSS since it started its program), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(command: list[str], cwd: Path, log: Path) -> dict[str, float]:
    """Run ``command``; its tree's peak summed PSS and RSS and its own high-water RSS (polled), in bytes."""
    started = time.perf_counter()
    with log.open("wb") as out:
        child = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    process = psutil.Process(child.pid)
    peak = {"pss": 0, "rss": 0, "hwm": 0, "samples": 0}
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            try:
                pss, rss = tree_memory(process)
                peak["pss"], peak["rss"] = max(peak["pss"], pss), max(peak["rss"], rss)
                peak["hwm"] = max(peak["hwm"], high_water(child.pid))
                peak["samples"] += 1
            except (psutil.Error, OSError):  # the child just exited
                return
            done.wait(POLL_SECONDS)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    _, status = os.waitpid(child.pid, 0)
    done.set()
    poller.join()
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"training exited with {child.returncode}; end of its output ({log}):\n{tail}")
    return {"pss": peak["pss"], "rss": peak["rss"], "main": peak["hwm"], "samples": peak["samples"],
            "seconds": time.perf_counter() - started}


def mib(value: float) -> str:
    return f"{value / 2**20:.0f} MiB"


def run(quick: bool = False, data_root: Path = DATA_ROOT) -> list[Result]:
    """Peak memory at 1x and 10x train rows (quick: 640 instead of 1200 rows at 1x, batch 64 instead
    of the config's 16)."""
    batch_size = 64 if quick else 16
    started = time.perf_counter()
    demo = ensure_demo(data_root / "spoken_digits", size="small")
    console.print(f"demo set ready in {time.perf_counter() - started:.1f} s ({demo})")
    work = Path(tempfile.mkdtemp(prefix="mmtrain-bench-memory-"))
    try:
        started = time.perf_counter()
        roots = make_sets(demo, work, 10 if quick else None)
        rows = {label: pq.ParquetFile(root / "parquet" / "train.parquet").metadata.num_rows
                for label, root in roots.items()}
        large_train = roots[f"{SCALE}x"] / "parquet" / "train.parquet"
        disk, arrow = large_train.stat().st_size, pq.read_table(large_train).nbytes
        console.print(f"1x and {SCALE}x sets written in {time.perf_counter() - started:.1f} s ({work}); {SCALE}x train "
                      f"file {mib(disk)} on disk, {mib(arrow)} as Arrow")
        peaks = {}
        for label, root in roots.items():
            peaks[label] = m = measure(train_command(root, work / f"run-{label}", batch_size), work,
                                       work / f"train-{label}.log")
            console.print(f"{label} ({rows[label]} train rows): tree peak PSS {mib(m['pss'])}, RSS {mib(m['rss'])}, "
                          f"main peak {mib(m['main'])}, {m['samples']} samples, {m['seconds']:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    small, large = peaks["1x"], peaks[f"{SCALE}x"]
    return [
        goal_row(f"memory: peak PSS, process + workers, streamed parquet train, {rows[f'{SCALE}x']} vs "
                 f"{rows['1x']} train rows", mib(large["pss"]), mib(small["pss"]), large["pss"] / small["pss"],
                 GOAL, at_most=True),
        Result(f"memory: peak RSS sum (shared pages once per process), process + workers, {SCALE}x vs 1x",
               mib(large["rss"]), mib(small["rss"]), large["rss"] / small["rss"]),
        Result(f"memory: peak RSS of the training process alone (VmHWM), {SCALE}x vs 1x",
               mib(large["main"]), mib(small["main"]), large["main"] / small["main"]),
        Result(f"memory: {SCALE}x train split as Arrow in memory (what loading it all would add) vs 1x PSS peak",
               mib(arrow), mib(small["pss"]), arrow / small["pss"]),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="640 train rows at 1x instead of 1200, batch 64 instead of 16")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT, help="where the demo set is (built if missing)")
    args = parser.parse_args()
    results = run(quick=args.quick, data_root=args.data_root.resolve())
    title = (f"memory (streamed parquet, 1 epoch, 2 workers, batch {64 if args.quick else 16}; "
             f"process tree polled every {POLL_SECONDS * 1e3:.0f} ms)")
    return 0 if print_table(title, results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
