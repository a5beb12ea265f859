"""experiment=sentiment_chsims end to end on a CH-SIMS-layout fixture: the fused sentiment regressor plus one
auxiliary regressor per modality learning that modality's own score, every term logged, exported and served."""

from __future__ import annotations

from pathlib import Path

import pytest
from _probes import MetricsAtEnd, probe_trainers
from data._media import write_mp4
from data.test_format_chsims import write_chsims

from mmtrain.app.commands.predict import predict
from mmtrain.app.commands.train import train
from mmtrain.config.compose import compose_config

pytestmark = pytest.mark.slow


def rows() -> list[list[str]]:
    out = []
    for i, (split, count) in enumerate((("train", 8), ("valid", 4), ("test", 4))):
        for j in range(count):
            score = (-0.8, 0.8)[j % 2]
            out.append([f"video_{i}{j:03d}", "1", ("好" if score > 0 else "差") * 3, str(score), str(score),
                        str(score / 2), "0.0", "Positive" if score > 0 else "Negative", split])
    return out



def test_fused_and_unimodal_scores_train_together(tmp_path: Path, monkeypatch) -> None:
    write_chsims(tmp_path / "data" / "ch-sims", write_mp4(tmp_path / "clip.mp4", seconds=1.0), rows())
    seen = MetricsAtEnd()
    probe_trainers(monkeypatch, seen)
    cfg = compose_config(["experiment=sentiment_chsims", f"data_root={tmp_path / 'data'}", "data.batch_size=4",
                          "trainer.max_epochs=2", "callbacks.progress=null", "logger.tensorboard=null",
                          "+trainer.enable_model_summary=false", "trainer.num_sanity_val_steps=0",
                          "evaluate_unimodal=false", f"run_dir={tmp_path / 'run'}"])
    metrics = train(cfg)
    assert {"train/loss_fused", "train/loss_video", "train/loss_audio", "train/loss_text", "val/loss_text"} <= set(
        seen.metrics)
    fused, video, audio, text = (seen.metrics[f"train/loss_{k}"] for k in ("fused", "video", "audio", "text"))
    assert seen.metrics["train/loss_epoch"] == pytest.approx(fused + 0.3 * (video + audio + text), rel=1e-4)
    # the video head learns label_V (0 everywhere), not the fused score (+-0.8): its loss is far below fused's
    # at the start, where every head predicts about 0
    assert video < fused
    assert {"mae", "rmse", "pearson", "spearman"} <= set(metrics["test"])
    clip = tmp_path / "data" / "ch-sims" / "Raw" / "video_2000" / "0001.mp4"
    answer = predict(tmp_path / "run", video=str(clip), audio=str(clip), text="好好好")
    assert set(answer["prediction"]) == {"sentiment"}
