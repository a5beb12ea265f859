"""Experiments trained from packed shards end exactly as from their files: the alignment and the LLM experiments
from local shards, and the demo on 2 DDP processes from shards on an S3 server (moto, 127.0.0.1), killed (-9)
mid-epoch and resumed. Long runs: the README's second test command."""

from __future__ import annotations

from pathlib import Path

import pytest
from _cli import run_mmtrain
from _multiproc import BASE, DDP, killed_and_resumed, mmtrain
from _servers import s3_server

from mmtrain.engine.callbacks.faults import compare_runs

pytestmark = pytest.mark.long


def pack(work: Path, *overrides: str) -> Path:
    done = run_mmtrain("data", "pack", *overrides, "--out", str(work / "shards"), "--shard-size", "32KB", cwd=work,
                       timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return work / "shards"


@pytest.mark.parametrize("experiment", ["align_image_text", "vqa_digits"])
def test_an_experiment_trains_from_shards_as_from_its_files(experiment: str, tmp_path: Path) -> None:
    command = [f"experiment={experiment}", "data.prepare.size=tiny", "trainer.max_epochs=1", "callbacks.progress=null"]
    shards = pack(tmp_path, *command)
    for name, extra in (("from_files", []), ("from_shards", [f"shards.source={shards}"])):
        done = run_mmtrain("train", *command, *extra, f"run_dir={tmp_path / name}", cwd=tmp_path, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    # The LLM's token budget is checked before training over listed samples and batch by batch over shards
    # (like any stream: their annotations are not read whole); nothing else differs.
    expected = ["metrics.json:token_budget"] if experiment == "vqa_digits" else []
    assert compare_runs(tmp_path / "from_files", tmp_path / "from_shards") == expected


def test_ddp_from_s3_shards_killed_and_resumed_ends_as_from_its_files(tmp_path: Path) -> None:
    shards = pack(tmp_path, *BASE)
    whole = mmtrain(*BASE, *DDP, f"run_dir={tmp_path / 'whole'}", cwd=tmp_path, name="ddp_files")
    assert whole.returncode == 0, whole.stdout[-2000:] + whole.stderr[-4000:]
    with s3_server(shards) as endpoint:
        remote = [*DDP, "shards.source=s3://data", f"+shards.storage_options.endpoint_url={endpoint}"]
        killed = killed_and_resumed(tmp_path, remote, "ddp_s3_killed")
    assert compare_runs(tmp_path / "whole", killed) == []
