"""``mmtrain features`` on the tiny spoken-digits demo (mp4 + AAC): the shards hold exactly the entries a
cold feature-cache run stores, a run from them encodes nothing and matches one that encodes, packed shards
are left undecoded, an interrupted computation goes on where it stopped, bad requests are refused."""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from _cli import run_mmtrain

import mmtrain.models  # noqa: F401
from mmtrain.app.commands.data_pack import pack_config
from mmtrain.app.commands.features import compute_features
from mmtrain.app.commands.train import train
from mmtrain.config.compose import compose_config
from mmtrain.data.demo import ensure_demo
from mmtrain.data.feature_entries import entry_name, read_entry
from mmtrain.data.feature_shards import FeatureShards
from mmtrain.data.formats import shards as shards_format

pytestmark = [pytest.mark.slow, pytest.mark.long]  # minutes of CPU: in the long run (README, Tests)
SLOTS = ("video", "audio", "text")


def base(root: Path, *extra: str) -> list[str]:
    """Every encoder frozen, no augmentation or modality dropout: every slot cacheable in every split."""
    return ["data=spoken_digits", f"data.prepare.root={root}", "data.prepare.size=tiny", "data.batch_size=4",
            "data.num_workers=0", "data.processor.augment=null", "data.processor.modality_dropout=null",
            "+model.trainable.video=false", "+model.trainable.audio=false", "+model.trainable.text=false", *extra]


def run(root: Path, run_dir: Path, *extra: str) -> list[str]:
    return base(root, "trainer.max_epochs=2", "callbacks.progress=null", "logger.tensorboard=null",
                "+trainer.enable_model_summary=false", "trainer.num_sanity_val_steps=0", "evaluate_unimodal=false",
                f"run_dir={run_dir}", *extra)


def weights(metrics: dict) -> dict[str, torch.Tensor]:
    return torch.load(metrics["best_checkpoint"], weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("features_demo") / "spoken_digits"
    ensure_demo(root, seed=0, size="tiny")
    return root


@pytest.fixture(scope="module")
def features(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``mmtrain features`` as a user runs it (its own process), in shards of ~30 kB."""
    out = tmp_path_factory.mktemp("features") / "out"
    done = run_mmtrain("features", *base(demo), "--out", str(out), "--shard-size", "30KB", cwd=out.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "train with them: mmtrain train <the same overrides> feature_cache.shards=" in done.stdout
    return out


def stored(folder: Path) -> dict[str, FeatureShards]:
    """Per slot, its one store of ``folder`` for the val split."""
    return {slot: FeatureShards(next((folder / slot).glob("*/val"))) for slot in SLOTS}


def test_shards_hold_the_cache_entries_and_a_run_from_them_encodes_nothing(
        demo: Path, features: Path, tmp_path: Path, one_thread: None) -> None:
    summary = json.loads((features / "features-part000of001.json").read_text())
    assert {s: r["samples"] for s, r in summary["splits"].items()} == {"train": 16, "val": 8, "test": 8}
    assert summary["splits"]["train"]["shards"] > 1
    cold = train(compose_config(run(demo, tmp_path / "cold", "feature_cache.enabled=true",
                                    f"feature_cache.dir={tmp_path / 'cache'}")))
    # val batches are the split in order at data.batch_size, as here: the same keys, bit-identical entries
    for slot, store in stored(features).items():
        keys = [p.parent.name for p in (tmp_path / "cache" / slot).glob("*/val")]
        assert keys == [store.folder.parent.name]
        ids = [i for p in store.folder.glob("*.json") for i in json.loads(p.read_text())["ids"]]
        assert len(ids) == len(store) == 8
        for sample_id in ids:
            entry = read_entry(tmp_path / "cache" / slot / keys[0] / "val" / entry_name(sample_id), sample_id)
            shard = store.get(sample_id)
            assert all(torch.equal(entry[k], shard[k]) for k in ("tokens", "mask", "pooled")), (slot, sample_id)

    shards = f"feature_cache.shards={features}"
    first = train(compose_config(run(demo, tmp_path / "shards1", shards, f"feature_cache.dir={tmp_path / 'c1'}")))
    again = train(compose_config(run(demo, tmp_path / "shards2", shards, f"feature_cache.dir={tmp_path / 'c2'}")))
    stats = first["feature_cache"]
    assert stats["misses"] == {} and stats["writes"] == {} and not (tmp_path / "c1").exists()
    assert all(stats["hits"][f"train/{slot}"] == 2 * 16 for slot in SLOTS)
    # Train entries came from other batches (dataset order, not the shuffled epoch): features within the
    # cache's tolerance of the cold run, so val metrics equal and weights within 1e-5; two runs identical.
    for key in ("acc", "macro_f1"):
        assert first["val"][key] == cold["val"][key] and first["test"][key] == cold["test"][key]
    a, b, c = weights(cold), weights(first), weights(again)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5)
        assert torch.equal(b[name], c[name]), name


def test_other_key_is_named_and_encoded(demo: Path, features: Path, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture, one_thread: None) -> None:
    with caplog.at_level(logging.WARNING, logger="mmtrain.models.feature_cache"):
        metrics = train(compose_config(run(demo, tmp_path / "run", f"feature_cache.shards={features}",
                                           f"feature_cache.dir={tmp_path / 'cache'}", "trainer.max_epochs=1",
                                           "data.processor.max_text_length=4")))
    assert "holds no train features of slot 'text' at this run's key" in caplog.text
    assert "it has keys" in caplog.text and "video" not in caplog.text
    assert metrics["feature_cache"]["misses"] == {"train/text": 16, "val/text": 8, "test/text": 8}


def test_packed_shards_are_not_decoded_and_an_interrupted_computation_goes_on(
        demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None) -> None:
    pack_config(compose_config(base(demo)), out=tmp_path / "packed", shard_bytes=50_000)
    packed = base(demo, f"shards.source={tmp_path / 'packed'}")
    out = tmp_path / "features"
    first = compute_features(compose_config(packed), out=out, shard_bytes=20_000)
    folders = {slot: Path(first["splits"]["train"]["slots"][slot]["folder"]) for slot in SLOTS}
    assert first["splits"]["train"]["shards"] >= 3
    whole = tmp_path / "whole"
    shutil.copytree(out, whole)
    last = sorted(folders["audio"].glob("*.json"))[-2]
    last.unlink()  # killed between one slot's shard and its sidecar: that shard and later ones are redone
    again = compute_features(compose_config(packed), out=out, shard_bytes=20_000)
    assert 0 < again["splits"]["train"]["continued_from"] < 16 and again["splits"]["val"]["shards"] == 0
    for slot, folder in folders.items():
        mirror = whole / folder.relative_to(out)
        assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in mirror.iterdir())
        assert all(p.read_bytes() == (mirror / p.name).read_bytes() for p in folder.iterdir()), slot

    calls: Counter = Counter()
    for name in ("read_video_segment", "read_audio_segment"):
        real = getattr(shards_format, name)
        monkeypatch.setattr(shards_format, name, lambda *a, _r=real, _n=name, **k: calls.update([_n]) or _r(*a, **k))
    metrics = train(compose_config(run(demo, tmp_path / "run", f"shards.source={tmp_path / 'packed'}",
                                       f"feature_cache.shards={out}", f"feature_cache.dir={tmp_path / 'cache'}")))
    stats = metrics["feature_cache"]
    assert all(stats["hits"][f"train/{slot}"] == 2 * 16 for slot in SLOTS) and "train/video" not in stats["misses"]
    # no sample of any split decoded its media, but for the two of the pre-flight check (model fits data)
    assert calls == Counter({"read_video_segment": 2, "read_audio_segment": 2})


@pytest.mark.parametrize(("args", "message"), [
    (["--slots", "fusion"], "--slots ['fusion']: the model's encoder slots are"),
    (["--part", "2/2"], "--part '2/2': K must be in 0..N-1"),
    (["--splits", "dev"], "--splits ['dev']: the config has splits"),
])
def test_bad_requests_are_named(demo: Path, tmp_path: Path, args: list[str], message: str) -> None:
    done = run_mmtrain("features", *base(demo), "--out", str(tmp_path / "out"), *args, cwd=tmp_path)
    assert done.returncode == 2 and message in " ".join(done.stdout.split()), done.stdout + done.stderr


def test_a_trainable_slot_is_refused_with_its_reason(demo: Path, tmp_path: Path) -> None:
    overrides = [o for o in base(demo) if o != "+model.trainable.audio=false"]
    with pytest.raises(ValueError, match=r"audio: trainable \(model.trainable\)"):
        compute_features(compose_config(overrides), out=tmp_path / "out", shard_bytes=10_000, slots=["audio"])


def test_parts_written_apart_hold_the_entries_of_one_process(demo: Path, features: Path, tmp_path: Path) -> None:
    """``--part 0/2`` and ``--part 1/2`` (two processes, two GPUs) cut at whole batches: together, the same entries."""
    for part in (0, 1):
        compute_features(compose_config(base(demo)), out=tmp_path / "parts", shard_bytes=30_000, splits=["val"],
                         part=part, parts=2)
    whole, parts = stored(features), stored(tmp_path / "parts")
    for slot in SLOTS:
        assert parts[slot].folder.parent.name == whole[slot].folder.parent.name  # the same key
        assert {p.name.split("-")[0] for p in parts[slot].folder.glob("*.json")} == {"part000of002", "part001of002"}
        ids = [i for p in whole[slot].folder.glob("*.json") for i in json.loads(p.read_text())["ids"]]
        assert len(parts[slot]) == len(ids) == 8
        for sample_id in ids:
            a, b = whole[slot].get(sample_id), parts[slot].get(sample_id)
            assert all(torch.equal(a[k], b[k]) for k in ("tokens", "mask", "pooled")), (slot, sample_id)
