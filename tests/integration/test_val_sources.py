"""Named val sources with a task that gathers rows (alignment's retrieval): Recall@K per source over that source's
samples only, and their mean as val (what checkpoints follow); the table shows each source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from _cli import run_mmtrain

import mmtrain.configs

pytestmark = pytest.mark.slow


def test_alignment_reports_recall_per_val_source_and_their_mean(tmp_path: Path) -> None:
    data = yaml.safe_load((Path(mmtrain.configs.__file__).parent / "data" / "spoken_digits_items.yaml").read_text())
    data["val"] = {"studio": dict(data["val"]), "street": dict(data["test"])}
    (tmp_path / "configs" / "data").mkdir(parents=True)
    (tmp_path / "configs" / "data" / "two_val.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    done = run_mmtrain("train", "--config-dir", str(tmp_path / "configs"), "experiment=align_image_text",
                       "data=two_val", "data.prepare.size=tiny", "trainer.max_epochs=1", "callbacks.progress=null",
                       f"run_dir={tmp_path / 'run'}", cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    studio, street = metrics["val_sources"]["studio"], metrics["val_sources"]["street"]
    assert studio["n"] == street["n"] == 8 and metrics["val"]["n"] == 16  # each source ranks its own 8 samples
    assert metrics["val"]["r@1_mean"] == pytest.approx((studio["r@1_mean"] + street["r@1_mean"]) / 2)
    assert "val (studio)" in done.stdout and "val (street)" in done.stdout
