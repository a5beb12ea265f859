"""Weighted objectives of a classifier: the fused loss plus auxiliary per-modality losses (the seeds'
lambda_fusion / lambda_video / lambda_audio), each term logged, each head on its own encoder."""

from __future__ import annotations

from pathlib import Path

import pytest
from _probes import MetricsAtEnd, probe_trainers

from mmtrain.app.commands.train import train
from mmtrain.config.compose import compose_config

SYNTH = ["experiment=emotion_aux_losses", "data=synthetic", "data.train.num_samples=16", "data.val.num_samples=8",
         "data.test.num_samples=8", "data.batch_size=8", "trainer.max_epochs=1", "callbacks.progress=null",
         "logger.tensorboard=null", "+trainer.enable_model_summary=false", "trainer.num_sanity_val_steps=0",
         "evaluate_unimodal=false", "~callbacks.threads"]



def test_each_term_is_logged_and_the_objective_is_their_weighted_sum(tmp_path: Path, monkeypatch) -> None:
    seen = MetricsAtEnd()
    probe_trainers(monkeypatch, seen)
    cfg = compose_config([*SYNTH, "task.fused_weight=2.0", "task.aux_weights={video: 0.5, audio: 0.25}",
                          f"run_dir={tmp_path / 'run'}"])
    train(cfg)
    assert {"train/loss_fused", "train/loss_video", "train/loss_audio", "val/loss_video"} <= set(seen.metrics)
    # the epoch's objective is the weighted sum of its logged terms: 2 fused + 0.5 video + 0.25 audio
    fused, video, audio = (seen.metrics[f"train/loss_{k}"] for k in ("fused", "video", "audio"))
    assert seen.metrics["train/loss_epoch"] == pytest.approx(2 * fused + 0.5 * video + 0.25 * audio, rel=1e-4)


def test_weights_for_a_slot_without_an_auxiliary_head_are_refused(tmp_path: Path) -> None:
    cfg = compose_config([*SYNTH, "model.aux_heads=[video]", f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(ValueError, match=r"task.aux_weights \['audio'\]: the model has no auxiliary head"):
        train(cfg)
    cfg = compose_config([*SYNTH, "model.aux_heads=[video,smell]", f"run_dir={tmp_path / 'run2'}"])
    with pytest.raises(ValueError, match=r"model.aux_heads \['smell'\] name no encoder slot"):
        train(cfg)
