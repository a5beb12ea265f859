"""Training on a streamed, sharded parquet set: every row once per epoch, across 2 workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmtrain.config.compose import compose_config
from mmtrain.data.demo import ensure_demo
from mmtrain.app.commands.train import train

pytestmark = pytest.mark.slow

DIGITS = "[zero,one,two,three,four,five,six,seven,eight,nine]"


def parquet_demo(root: Path) -> list[str]:
    """The demo's parquet view (under ``root``) as image + text classification, 2 workers, 2 epochs of batch 4."""
    return ["data=parquet", f"data_root={root}", "data.num_workers=2", "data.batch_size=4",
            "+data.train.label_column=label", f"+data.train.label_names={DIGITS}",
            "+data.val.label_column=label", "+data.val.label_names=${data.train.label_names}",
            "+data.test.label_column=label", "+data.test.label_names=${data.train.label_names}",
            "model/encoders/image=vit", "~model/encoders/video", "~model/encoders/audio", "trainer.max_epochs=2"]


def test_trains_on_the_demo_parquet_view_by_changing_paths_only(tmp_path: Path) -> None:
    root = ensure_demo(tmp_path / "spoken_digits", size="tiny")
    overrides = [*parquet_demo(root), "callbacks.progress=null", f"run_dir={tmp_path / 'run'}"]
    metrics = train(compose_config(overrides))
    rows = 16  # tiny: 4 train clips x 4 segments, one parquet row each
    assert metrics["skipped"]["train"] == {"seen": 2 * rows, "skipped": 0}, "each row once per epoch"
    assert metrics["global_steps"] == 2 * rows // 4


@pytest.mark.long
def test_a_killed_parquet_stream_resumes_by_plan_exactly(tmp_path: Path) -> None:
    """2 workers, killed (-9) at step 6 of 8: resumed from step 5 (after batch 1 of epoch 2, the other worker next
    in turn), the run reads from its position by plan and ends bit-identical to the uninterrupted one."""
    from _multiproc import assert_killed_run_resumes_exactly

    root = ensure_demo(tmp_path / "spoken_digits", size="tiny")
    command = [*parquet_demo(root), "callbacks.progress=null", "evaluate_unimodal=false",
               "callbacks.resume_checkpoint.every_n_train_steps=1"]
    assert_killed_run_resumes_exactly(command, cwd=tmp_path, kill_at=6, resumed_from="last-step0000005.ckpt",
                                      name="parquet_killed")
