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


def test_the_llm_experiment_trains_from_a_datasets_folder_packed_into_shards(tmp_path: Path) -> None:
    """A `datasets` folder (save_to_disk: question, answer, PNG bytes) packed through data=hf_datasets, then the
    LLM experiment trained from the shards with its own processor: the same run as from the demo's files."""
    import datasets

    from mmtrain.data.demo import ensure_demo
    from mmtrain.data.formats.instruction import InstructionDataset

    root = ensure_demo(tmp_path / "data" / "spoken_digits", size="tiny")
    splits = {}
    for split, name in (("train", "train"), ("val", "validation"), ("test", "test")):
        records = InstructionDataset(path=str(root / "instruction" / f"{split}.jsonl"), root=str(root),
                                     modalities=["image", "text"]).records
        splits[name] = datasets.Dataset.from_dict({
            "id": [r.fields["id"] for r in records], "text": [r.fields["text"] for r in records],
            "target_text": [r.fields["target_text"] for r in records],
            "image": [{"bytes": Path(r.media["image"].path).read_bytes(), "path": None} for r in records],
        }, features=datasets.Features({"id": datasets.Value("string"), "text": datasets.Value("string"),
                                       "target_text": datasets.Value("string"), "image": datasets.Image()}))
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "folder"))
    command = ["experiment=vqa_digits", "data.prepare.size=tiny", "trainer.max_epochs=1", "callbacks.progress=null"]
    shards = pack(tmp_path, *[c for c in command if not c.startswith("data.prepare")], "data=hf_datasets",
                  f"data.train.source={tmp_path / 'folder'}")
    for name, extra in (("from_files", []), ("from_shards", [f"shards.source={shards}"])):
        done = run_mmtrain("train", *command, *extra, f"run_dir={tmp_path / name}", cwd=tmp_path, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert compare_runs(tmp_path / "from_files", tmp_path / "from_shards") == ["metrics.json:token_budget"]
