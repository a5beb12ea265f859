"""Training with the frozen-encoder feature cache: same val metrics as without it, identical cached runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mmtrain  # noqa: F401
from mmtrain.config.compose import compose_config
from mmtrain.training.run import train

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
