"""The regression kind end to end on the demo set: train (float targets from the metadata's `label`
column), the report's headline metric, eval, export from a checkpoint, predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _cli import run_mmtrain

pytestmark = pytest.mark.slow

TINY = ["experiment=digits_regression", "data.prepare.size=tiny", "data.batch_size=16", "trainer.max_epochs=2",
        "callbacks.progress=null", "~logger"]


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("regression")
    run_dir = workdir / "run"
    done = run_mmtrain("train", *TINY, f"data_root={workdir / 'data'}", f"run_dir={run_dir}", cwd=workdir)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return run_dir


def test_training_reports_regression_metrics_with_mae_as_headline(regression_run: Path) -> None:
    metrics = json.loads((regression_run / "metrics.json").read_text())
    assert metrics["primary_metric"] == {"name": "mae", "higher_is_better": False}
    test = metrics["test"]
    assert set(test) >= {"mae", "rmse", "pearson", "spearman"}
    assert 0 < test["mae"] <= test["rmse"] < 9  # digits are 0-9: any prediction inside is off by < 9
    assert set(metrics["test_only_one_modality"]) == {"audio", "image"}
    html = (regression_run / "report.html").read_text()
    assert f"test mae {test['mae']:.3f}" in html


def test_eval_reproduces_the_test_metrics(regression_run: Path) -> None:
    done = run_mmtrain("eval", str(regression_run), "--split", "test", cwd=regression_run)
    assert done.returncode == 0, done.stderr[-3000:]
    stored = json.loads((regression_run / "metrics.json").read_text())["test"]
    assert f"{stored['mae']:.4f}" in done.stdout


def test_export_and_predict_give_a_number_per_target(regression_run: Path, tmp_path: Path) -> None:
    checkpoint = sorted((regression_run / "checkpoints").glob("best-*.ckpt"))[0]
    done = run_mmtrain("export", str(checkpoint), "--out", str(tmp_path / "export"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["model_type"] == "mmtrain_regression" and config["target_names"] == ["digit"]
    root = regression_run.parent / "data" / "spoken_digits"
    record = json.loads((root / "metadata" / "test_image_audio_text.jsonl").read_text().splitlines()[0])
    done = run_mmtrain("predict", str(tmp_path / "export"), "--image", str(root / record["image_path"]),
                       "--audio", str(root / record["audio_path"]), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert set(result["prediction"]) == {"digit"} and -5 < result["prediction"]["digit"] < 15
    assert result["modalities_used"] == ["audio", "image"]
