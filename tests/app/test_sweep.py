"""``mmtrain train -m``: sweep overrides expand to their product (Hydra's grammar), each combination
trains into its own folder, a failing one is recorded while the rest go on, one table compares them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmtrain.app.cli import main
from mmtrain.app.commands.sweep import expand, label


def test_sweeps_expand_to_their_product_in_command_line_order() -> None:
    combos = expand(["model/fusion=concat,gated", "trainer.max_epochs=1", "data.batch_size=range(8,17,8)"])
    assert combos == [
        ["model/fusion=concat", "trainer.max_epochs=1", "data.batch_size=8"],
        ["model/fusion=concat", "trainer.max_epochs=1", "data.batch_size=16"],
        ["model/fusion=gated", "trainer.max_epochs=1", "data.batch_size=8"],
        ["model/fusion=gated", "trainer.max_epochs=1", "data.batch_size=16"],
    ]
    swept = ["model/fusion=gated", "data.batch_size=16"]
    assert label(combos[3], swept) == "fusion-gated_batch_size-16"
    assert expand(["trainer.max_epochs=1"]) == [["trainer.max_epochs=1"]]


@pytest.mark.slow  # three tiny runs (~20 s)
def test_a_sweep_trains_each_combination_and_compares_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(["train", "-m", "data=synthetic", "data.train.num_samples=16", "data.val.num_samples=8",
                 "data.test.num_samples=8", "data.batch_size=8,-4", "model/fusion=concat,gated", "trainer.max_epochs=1",
                 "logger.tensorboard=null", "evaluate_unimodal=false", "callbacks.progress=null",
                 f"run_dir={tmp_path / 'sweep'}"])
    assert code == 1  # the batch size of -4 fails (twice): named, the other runs kept
    summary = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert list(summary["runs"]) == ["0-batch_size-8_fusion-concat", "1-batch_size-8_fusion-gated",
                                     "2-batch_size--4_fusion-concat", "3-batch_size--4_fusion-gated"]
    assert summary["failed"] == ["2-batch_size--4_fusion-concat", "3-batch_size--4_fusion-gated"]
    assert "data.batch_size must be >= 1" in summary["runs"]["2-batch_size--4_fusion-concat"]["error"]
    for name in ("0-batch_size-8_fusion-concat", "1-batch_size-8_fusion-gated"):
        assert (tmp_path / "sweep" / name / "metrics.json").is_file()
        assert "acc" in summary["runs"][name]["test"]
    out = capsys.readouterr().out
    assert "sweep: test metrics of 4 runs" in out and "failed" in out
    assert "<h2>Sweep</h2>" in (tmp_path / "sweep" / "report.html").read_text()
