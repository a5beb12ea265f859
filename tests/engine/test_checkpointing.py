"""Resume-point rotation in a real run: newest kept, every k-th epoch kept, last.ckpt, foreign files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mmtrain.config.compose import compose_config
from mmtrain.engine.callbacks.checkpoint_manifest import verify_checkpoint
from mmtrain.app.commands.train import train

pytestmark = pytest.mark.slow


def test_rotation_keeps_the_newest_and_every_kth_epoch_and_never_foreign_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    monkeypatch.chdir(tmp_path)  # the demo set is built under ./data
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    foreign = run_dir / "checkpoints" / "last-step0000099.ckpt.bak"
    foreign.write_bytes(b"someone else's file")
    train(compose_config([
        "experiment=demo", "data.prepare.size=tiny", "data.batch_size=4", "trainer.max_epochs=3",
        "callbacks.progress=null", "evaluate_unimodal=false", "callbacks.grad_audit=null",
        "callbacks.resume_checkpoint.every_n_train_steps=1", "callbacks.resume_checkpoint.keep_last=2",
        "callbacks.resume_checkpoint.keep_every_n_epochs=2", f"run_dir={run_dir}",
    ]))
    folder = run_dir / "checkpoints"
    names = sorted(p.name for p in folder.iterdir() if p.suffix == ".ckpt" and not p.is_symlink())
    resume_points = [n for n in names if not n.startswith("best-")]
    # 4 steps per epoch, 12 in all: every step wrote one, the newest two survive, epoch 1 (the 2nd) stays
    assert resume_points == ["epoch001-step0000008.ckpt", "last-step0000011.ckpt", "last-step0000012.ckpt"]
    assert os.readlink(folder / "last.ckpt") == "last-step0000012.ckpt"
    manifest = json.loads((folder / "manifest.json").read_text())["checkpoints"]
    assert sorted(manifest) == names  # deleted files left the manifest, no unlisted file was written
    for name in names:
        verify_checkpoint(folder / name)
    assert foreign.read_bytes() == b"someone else's file"
