"""Frozen-encoder feature cache benchmark (a script, not a test).

Trains the same job twice in one process, ``train(compose_config([...]))`` both times: once without
the cache (baseline) and once with ``feature_cache.enabled=true`` on an empty cache folder. Every
encoder frozen (only fusion and head train), no augmentation or modality dropout, 4 epochs, one
torch thread, ``data.num_workers=0``, the real all-MiniLM-L6-v2 text tower
(``model/encoders/text=minilm``) and the default video and audio encoders. Three jobs:

* ``mp4 video+audio+text``: real media files, the ``small`` spoken-digits demo set (H.264 + AAC),
  128 train / 64 val segments (the label files of the first 32 / 16 clips). From epoch 2 on the
  cached slots' media are not decoded at all (``RecordDataset.load`` of the other modalities).
  The set is built once under ``$TMPDIR/mmtrain-bench-data`` (about 30 s; shared with
  ``data_wait.py``).
* ``synthetic video+audio+text`` and ``synthetic video+text``: generated samples (``data=synthetic``,
  128 train / 64 val). The synthetic dataset generates a whole sample or nothing, so its media are
  still generated every epoch (and then dropped before preprocessing); with the per-sample seeding of
  the resumable loader and the training step itself, that bounds the speed-up there.

Prints a table, each row with its ratio against the baseline measured in the same run:

1. cached run, median epoch 2+ (train + val, read from the cache) vs the uncached run's epochs 2+ (goal: >= 5x);
2. cached run, median epoch 2+ vs its own epoch 1 (encoders run, cache written; goal: >= 5x);
3. max abs difference of the final val logits (best weights, re-scored) and of val acc / macro-F1
   between the cached and the uncached run (tolerance 1e-4 on logits, metrics equal);
4. mp4 job only, precomputed feature shards (``mmtrain features`` once, then ``feature_cache.shards=``):
   the median epoch from the shards vs the uncached run's (goal: >= 5x: no epoch encodes), the files
   written (shards vs per-sample entries) and the val logits against the uncached run (<= 1e-4).

Run: ``.venv/bin/python benchmarks/feature_cache.py [--epochs 4] [--train 128] [--val 64]``
(``--train``/``--val`` size the synthetic jobs). Takes one to two minutes on 2 CPU cores (plus the
demo set's first build). Quick variant (``run_all.py --quick``): 3 epochs, the mp4 and synthetic
video+text jobs. Exit code 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/harness.py, when run as a script
from harness import DATA_ROOT, Result, goal_row, print_table, train_probed  # noqa: E402

from mmtrain.data.demo import ensure_demo  # noqa: E402

GOAL = 5.0
LOGIT_TOLERANCE = 1e-4


class EpochTimer(pl.Callback):
    """Wall time of each training epoch (its validation included), ``time.perf_counter``."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._start)


class ValLogits(pl.Callback):
    """The head's outputs (logits) over the last validation pass."""

    def __init__(self) -> None:
        self.logits: list[torch.Tensor] = []
        self._handle: Any = None

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.logits = []
        self._handle = pl_module.model.head.register_forward_hook(
            lambda _m, _i, out: self.logits.append(out.detach().clone()))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._handle.remove()


def train_timed(overrides: list[str]) -> tuple[dict[str, Any], EpochTimer, ValLogits]:
    timer, logits = EpochTimer(), ValLogits()
    return train_probed(overrides, [timer, logits]), timer, logits


def run(quick: bool = False, epochs: int | None = None, train: int = 128, val: int = 64) -> list[Result]:
    """Rows ``cache: ...`` for each job (speed-up of later epochs, equality with no cache)."""
    warnings.filterwarnings("ignore")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors on a shared 2-core machine: one thread is faster and steadier
    logging.disable(logging.WARNING)
    try:
        with tempfile.TemporaryDirectory(prefix="mmtrain-bench-cache-") as tmp:
            jobs = [job for job in JOBS if job[0] != "synthetic video+audio+text"] if quick else JOBS
            return [row for name, data in jobs
                    for row in measure(name, data(Path(tmp) / "data", train, val), epochs or (3 if quick else 4),
                                       Path(tmp) / name.replace(" ", "_"))]
    finally:
        torch.set_num_threads(threads)
        logging.disable(logging.NOTSET)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train", type=int, default=128)
    parser.add_argument("--val", type=int, default=64)
    args = parser.parse_args()
    started = time.perf_counter()
    results = run(epochs=args.epochs, train=args.train, val=args.val)
    ok = print_table(f"frozen-encoder feature cache ({args.epochs} epochs, {time.perf_counter() - started:.0f} s)",
                     results)
    return 0 if ok else 1


def synthetic(train: int, val: int, *extra: str) -> list[str]:
    return ["data=synthetic", f"data.train.num_samples={train}", f"data.val.num_samples={val}",
            "data.test.num_samples=16", *extra]


def mp4(work: Path, clips_train: int = 32, clips_val: int = 16) -> list[str]:
    """The small spoken-digits set, restricted to the label files of its first clips (4 segments each)."""
    root = DATA_ROOT / "spoken_digits"
    ensure_demo(root, size="small")
    overrides = ["data=spoken_digits", f"data.prepare.root={root}", "data.prepare.size=small", "data.num_workers=0",
                 "data.processor.augment=null", "data.processor.modality_dropout=null",
                 "+model.trainable.audio=false", "+trainer.limit_test_batches=1"]
    for split, clips in (("train", clips_train), ("val", clips_val)):
        labels = work / "labels" / split
        labels.mkdir(parents=True, exist_ok=True)
        for file in sorted((root / "labels" / split).glob("*.json"))[:clips]:
            shutil.copy(file, labels / file.name)
        overrides.append(f"data.{split}.label_dir={labels}")
    return overrides


#: (name, data overrides from (work dir, train size, val size)): every encoder frozen. "synthetic
#: video+audio+text" also computes log-mel audio features in the collate without the cache (Whisper
#: features, ~17 ms a batch); "synthetic video+text" does not.
JOBS = [
    ("mp4 video+audio+text", lambda work, train, val: mp4(work)),
    ("synthetic video+audio+text", lambda work, train, val: synthetic(train, val, "+model.trainable.audio=false")),
    ("synthetic video+text", lambda work, train, val: synthetic(train, val, "~model/encoders/audio")),
]


def measure(name: str, data: list[str], epochs: int, work: Path) -> list[Result]:
    common = [
        "model/encoders/text=minilm", "+model.trainable.video=false", "+model.trainable.text=false", *data,
        f"trainer.max_epochs={epochs}", "callbacks.progress=null", "logger.tensorboard=null",
        "+trainer.enable_model_summary=false", "trainer.num_sanity_val_steps=0", "evaluate_unimodal=false",
    ]
    base, base_time, base_logits = train_timed([*common, "feature_cache.enabled=false", f"run_dir={work / 'plain'}"])
    cached, cache_time, cache_logits = train_timed([*common, "feature_cache.enabled=true",
                                                     f"feature_cache.dir={work / 'cache'}", f"run_dir={work / 'cached'}"])
    later = statistics.median(cache_time.seconds[1:])  # median: robust to other load on the machine
    base_later = statistics.median(base_time.seconds[1:])
    diff = float((torch.cat(base_logits.logits) - torch.cat(cache_logits.logits)).abs().max())
    metric_diff = max(abs(float(base["val"][k]) - float(cached["val"][k])) for k in ("acc", "macro_f1"))
    stats = cached["feature_cache"]
    hits, misses = sum(stats["hits"].values()), sum(stats["misses"].values())
    return [
        goal_row(f"cache [{name}]: epochs 2+ with cache vs the same epochs without", f"{later:.2f} s/epoch",
                 f"{base_later:.2f} s/epoch", base_later / later, GOAL, at_most=False),
        goal_row(f"cache [{name}]: epochs 2+ vs its own epoch 1 (encode + write)", f"{later:.2f} s/epoch",
                 f"{cache_time.seconds[0]:.2f} s", cache_time.seconds[0] / later, GOAL, at_most=False),
        Result(f"cache [{name}]: max |val logits| difference, cached vs not ({hits} reads, {misses} encodes)",
               f"{diff:.1e}", "0", None, f"<= {LOGIT_TOLERANCE:.0e}, metrics equal",
               diff <= LOGIT_TOLERANCE and metric_diff == 0.0),
    ] + (precomputed(name, common, work, base_time, base_logits, cache_files=count_files(work / "cache"))
         if name.startswith("mp4") else [])


def count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def precomputed(name: str, common: list[str], work: Path, base_time: EpochTimer, base_logits: ValLogits,
                cache_files: int) -> list[Result]:
    """``mmtrain features`` once, then a run from its shards: no epoch encodes (against the uncached run)."""
    from mmtrain.app.commands.features import compute_features
    from mmtrain.config.compose import compose_config

    began = time.perf_counter()
    compute_features(compose_config(common), out=work / "features", shard_bytes=64 << 20)
    seconds = time.perf_counter() - began
    shards, shard_time, shard_logits = train_timed([*common, f"feature_cache.shards={work / 'features'}",
                                               f"feature_cache.dir={work / 'cache_unused'}",
                                               f"run_dir={work / 'from_shards'}"])
    every, base_every = statistics.median(shard_time.seconds), statistics.median(base_time.seconds)
    files = count_files(work / "features")
    stats = shards["feature_cache"]
    hits, misses = sum(stats["hits"].values()), sum(stats["misses"].values())
    diff = float((torch.cat(base_logits.logits) - torch.cat(shard_logits.logits)).abs().max())
    return [
        goal_row(f"feature shards [{name}]: every epoch from `mmtrain features` shards vs the same epochs without "
                 f"(features: {seconds:.1f} s once)", f"{every:.2f} s/epoch", f"{base_every:.2f} s/epoch",
                 base_every / every, GOAL, at_most=False),
        Result(f"feature shards [{name}]: files written, shards vs per-sample cache entries",
               str(files), str(cache_files), None, "fewer", files < cache_files),
        Result(f"feature shards [{name}]: max |val logits| difference vs the uncached run ({hits} reads, "
               f"{misses} encodes)", f"{diff:.1e}", "0",
               None, f"<= {LOGIT_TOLERANCE:.0e}", diff <= LOGIT_TOLERANCE),
    ]


if __name__ == "__main__":
    sys.exit(main())
