"""Every benchmark, one table: each goal's ratio against a baseline measured in the same run.

    .venv/bin/python benchmarks/run_all.py [--quick] [--only step,cache,...]

Rows: ``startup`` (``mmtrain --help``, ``mmtrain list``, ``import mmtrain`` vs ``python -c pass``), ``step`` (mmtrain vs a hand-written loop and the transformers Trainer), ``compute`` (achieved
vs matmul-peak FLOP/s), ``cache`` (frozen-encoder feature cache), ``data`` (segment seek, decode
throughput, time waiting for data), ``memory`` (peak RSS streaming parquet at 1x vs 10x),
``checkpointing`` (activation memory and step time with gradient checkpointing at ~100M parameters,
FLOP/s against the matmul peak), ``qlora`` (RSS and step time of QLoRA 4/8-bit against float32 LoRA),
``peer`` (a VLM's LoRA SFT step: mmtrain vs the transformers Trainer + peft, time and peak RSS), ``shards``
(packed shards: resume position, throughput against the mp4 files, RSS at 10x the samples; HTTP / S3 and the
webdataset / HF streaming engines reported).
Exit code 1 when a goal is missed. ``--quick`` uses fewer steps, repeats and jobs (a few minutes).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Result, console, print_table, with_malloc_tunables  # noqa: E402

#: name -> module; each has ``run(quick) -> list[Result]``.
BENCHMARKS = {"startup": "startup", "step": "training_step", "cache": "feature_cache", "data": "decode",
              "wait": "data_wait", "memory": "memory", "checkpointing": "checkpointing", "qlora": "qlora",
              "peer": "peer_sft", "shards": "shards"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {sorted(BENCHMARKS)}")
    args = parser.parse_args()
    with_malloc_tunables()
    chosen = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)}")
    results: list[Result] = []
    started = time.perf_counter()
    for name in chosen:
        began = time.perf_counter()
        console.rule(f"{name} ({BENCHMARKS[name]}.py)")
        results += importlib.import_module(BENCHMARKS[name]).run(quick=args.quick)
        console.print(f"{name}: {time.perf_counter() - began:.0f} s")
    ok = print_table(f"mmtrain benchmarks ({'quick, ' if args.quick else ''}"
                     f"{time.perf_counter() - started:.0f} s on this machine)", results)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
