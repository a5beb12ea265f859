"""A run that stops before it finishes (here SIGTERM, as a scheduler sends it) still leaves a report:
what it wrote until then, why it stopped and how to continue; a resumed run that finishes drops the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _cli import run_mmtrain

RUN = ["data=synthetic", "data.train.num_samples=16", "data.val.num_samples=8", "data.test.num_samples=8",
       "data.batch_size=4", "trainer.max_epochs=2", "callbacks.progress=null", "logger.tensorboard=null",
       "evaluate_unimodal=false"]


@pytest.mark.slow  # a tiny run stopped by SIGTERM, then resumed (~20 s)
@pytest.mark.long
def test_a_stopped_run_has_a_report_saying_why_and_a_finished_resume_drops_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    kill = "+callbacks.kill={_target_: mmtrain.engine.callbacks.faults.KillSwitch, at_step: 5, signal: TERM}"
    done = run_mmtrain("train", *RUN, kill, f"run_dir={run_dir}", cwd=tmp_path)
    assert done.returncode == 143, done.stdout[-2000:] + done.stderr[-2000:]
    stop = json.loads((run_dir / "stopped.json").read_text())
    assert stop["reason"] == "terminated (SIGTERM)" and stop["global_step"] == 5
    page = (run_dir / "report.html").read_text()
    assert "The run stopped before it finished" in page and "terminated (SIGTERM)" in page
    assert f"resume={run_dir}" in page and 'alt="loss curves"' in page  # what the run wrote until then
    done = run_mmtrain("train", *RUN, f"resume={run_dir}", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert not (run_dir / "stopped.json").exists()
    assert "stopped before it finished" not in (run_dir / "report.html").read_text()
