"""Training with the frozen-encoder feature cache: same val metrics as without it, identical cached runs;
on real media files, later epochs decode nothing of the cached slots, a resume is still exact and a
changed setting misses."""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from _probes import probe_trainers

import mmtrain.models  # noqa: F401
from mmtrain.config.compose import compose_config
from mmtrain.config.targets import runtime_prefixes
from mmtrain.data.demo import ensure_demo
from mmtrain.data.formats import common
from mmtrain.data.resumable import dataset_fingerprint
from mmtrain.engine.build import build_data
from mmtrain.engine.callbacks.faults import compare_runs, final_checkpoint, kill_overrides
from mmtrain.app.commands.train import train
from mmtrain.engine.callbacks.signals import TrainingTerminated

pytestmark = pytest.mark.slow

TINY = ["data=synthetic", "data.train.num_samples=32", "data.val.num_samples=16", "data.test.num_samples=8",
        "data.batch_size=8", "trainer.max_epochs=2", "callbacks.progress=null", "logger.tensorboard=null",
        "+trainer.enable_model_summary=false", "trainer.num_sanity_val_steps=0", "evaluate_unimodal=false",
        "+model.trainable.video=false", "+model.trainable.text=false"]


def weights(metrics: dict) -> dict[str, torch.Tensor]:
    return torch.load(metrics["best_checkpoint"], weights_only=True)["state_dict"]


def test_cached_training_matches_uncached_and_repeats_exactly(tmp_path: Path, one_thread: None) -> None:
    cache = f"feature_cache.dir={tmp_path / 'cache'}"
    plain = train(compose_config([*TINY, cache, f"run_dir={tmp_path / 'plain'}"]))
    cold = train(compose_config([*TINY, cache, "feature_cache.enabled=true", f"run_dir={tmp_path / 'cold'}"]))
    warm = train(compose_config([*TINY, cache, "feature_cache.enabled=true", f"run_dir={tmp_path / 'warm'}"]))

    assert "feature_cache" not in plain
    stats = cold["feature_cache"]
    assert stats["cached_slots"]["train"] == ["video", "text"]  # audio is trainable: never cached
    assert stats["misses"]["train/video"] == 32 and stats["hits"]["train/video"] == 32  # epoch 1 / epoch 2
    assert stats["hits"]["val/text"] >= 16 and "train/audio" not in stats["misses"]
    assert sum(warm["feature_cache"]["misses"].values()) == 0  # the second run reads everything

    # Tolerance: val metrics equal; weights within 1e-5 of the uncached run (text re-padding can move
    # the last float bits of attention outputs), bit-identical between the two cached runs.
    for split in ("val", "test"):
        for key in ("acc", "macro_f1"):
            assert cold[split][key] == plain[split][key] == warm[split][key]
    a, b, c = weights(plain), weights(cold), weights(warm)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5)
        assert torch.equal(b[name], c[name]), name


# ---- real media files (the tiny spoken-digits demo: mp4 video + AAC audio, 16 train / 8 val samples) ----

def demo_run(root: Path, run_dir: Path, cache: Path, *extra: str) -> list[str]:
    """Every encoder frozen, no augmentation or modality dropout: every slot cached, in every split."""
    return ["data=spoken_digits", f"data.prepare.root={root}", "data.prepare.size=tiny", "data.batch_size=4",
            "data.num_workers=0", "data.processor.augment=null", "data.processor.modality_dropout=null",
            "trainer.max_epochs=3", "callbacks.progress=null", "logger.tensorboard=null",
            "+trainer.enable_model_summary=false", "trainer.num_sanity_val_steps=0", "evaluate_unimodal=false",
            "callbacks.resume_checkpoint.every_n_train_steps=2", "+model.trainable.video=false",
            "+model.trainable.audio=false", "+model.trainable.text=false", "feature_cache.enabled=true",
            f"feature_cache.dir={cache}", f"run_dir={run_dir}", *extra]


class DecodesPerEpoch(pl.Callback):
    """Decoder calls (``calls``, counted by the patched decoders) in each train epoch, its validation included."""

    def __init__(self, calls: Counter) -> None:
        self.calls, self.epochs, self._start = calls, [], Counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = Counter(self.calls)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs.append({name: self.calls[name] - self._start[name] for name in DECODERS})


DECODERS = ("read_video_segment", "read_audio_segment")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cache_demo") / "spoken_digits"
    ensure_demo(root, seed=0, size="tiny")
    return root


def probe_decoders(monkeypatch: pytest.MonkeyPatch) -> DecodesPerEpoch:
    """Counting wrappers around the real decoders (the dataset's ``MediaRef.load`` calls them), and a
    callback, added to every trainer ``train`` builds, that records the counts per epoch."""
    calls: Counter = Counter()
    for name in DECODERS:
        real = getattr(common, name)

        def counting(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(common, name, counting)
    probe = DecodesPerEpoch(calls)
    probe_trainers(monkeypatch, probe)
    return probe


@pytest.fixture(scope="module")
def reference(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A cold-cache run, uninterrupted, and the decoder calls of each of its epochs."""
    work = tmp_path_factory.mktemp("cache_reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            probe = probe_decoders(patch)
            metrics = train(compose_config(demo_run(demo, work / "run", work / "cache")))
    finally:
        torch.set_num_threads(threads)
    return {"metrics": metrics, "epochs": probe.epochs, "run_dir": work / "run", "cache": work / "cache"}


def test_later_epochs_decode_no_cached_media(reference: dict[str, Any]) -> None:
    first, *later = reference["epochs"]
    assert first == {"read_video_segment": 16 + 8, "read_audio_segment": 16 + 8}  # train + val, cold cache
    assert later == [{"read_video_segment": 0, "read_audio_segment": 0}] * 2  # served from the cache
    stats = reference["metrics"]["feature_cache"]
    assert stats["hits"]["train/video"] == stats["hits"]["train/audio"] == stats["hits"]["train/text"] == 2 * 16
    assert stats["misses"]["train/video"] == 16 and stats["misses"]["val/audio"] == 8


@pytest.fixture
def sigterm_guard() -> Iterator[None]:
    """A no-op SIGTERM handler under Lightning's (which chains it): the signal cannot kill pytest."""
    before = signal.signal(signal.SIGTERM, lambda *_: None)
    yield
    signal.signal(signal.SIGTERM, before)


def test_resume_with_cache_and_two_workers_is_exact(demo: Path, reference: dict[str, Any], tmp_path: Path,
                                                    sigterm_guard: None, one_thread: None) -> None:
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    workers = "data.num_workers=2"
    with pytest.raises(TrainingTerminated):  # stopped after step 3 (of 4 in epoch 1), entries of 3 batches written
        train(compose_config(demo_run(demo, run_dir, cache, workers, *kill_overrides(3, "train_batch_end", "TERM"))))
    newest = final_checkpoint(run_dir)
    assert newest.name == "last-step0000003.ckpt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x01  # damaged: the resume goes back to step 2, so step 3 is replayed from entries
    newest.write_bytes(bytes(data))
    resumed = train(compose_config(demo_run(demo, run_dir, cache, workers, f"resume={run_dir}")))
    assert resumed["resumed_from"] == "last-step0000002.ckpt"
    assert resumed["feature_cache"]["hits"]["train/video"] == 4 + 2 * 16  # the replayed batch, then epochs 2-3
    # bit-identical to the uninterrupted run; only the cache's own counts differ
    assert compare_runs(reference["run_dir"], run_dir) == ["metrics.json:feature_cache"]
    # the train data's fingerprint is the raw dataset's, as without the cache
    saved = torch.load(final_checkpoint(run_dir), map_location="cpu", weights_only=True)
    raw = build_data(compose_config(demo_run(demo, run_dir, cache)), runtime_prefixes()).splits["train"]
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["fingerprint"] == dataset_fingerprint(raw)


@pytest.mark.parametrize(("setting", "missed", "decoded"), [
    # text only: the media of video and audio are still served (not decoded)
    ("data.processor.max_text_length=4", {"text"}, {"read_video_segment": 0, "read_audio_segment": 0}),
    # frame size: the frame encoder's shapes change, and with them the random init of the slots built after it
    ("data.processor.image_size=12", {"video", "audio", "text"}, {"read_video_segment": 24, "read_audio_segment": 24}),
])
def test_changed_setting_misses_and_decodes_again(demo: Path, reference: dict[str, Any], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch, setting: str, missed: set[str],
                                                 decoded: dict[str, int], one_thread: None) -> None:
    decodes = probe_decoders(monkeypatch)
    overrides = demo_run(demo, tmp_path / "run", reference["cache"], setting, "trainer.max_epochs=1")
    metrics = train(compose_config(overrides))
    stats = metrics["feature_cache"]  # on the reference run's cache
    assert {k.split("/")[1] for k in stats["misses"] if k.startswith("train/")} == missed
    assert all(stats["misses"][f"train/{slot}"] == 16 for slot in missed)
    assert {k.split("/")[1] for k in stats["hits"] if k.startswith("train/")} == {"video", "audio", "text"} - missed
    assert decodes.epochs == [decoded]  # train + val of the one epoch
