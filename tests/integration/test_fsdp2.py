"""FSDP2 on CPU as a user runs it, 2 gloo processes: sharded checkpoints (``trainer=fsdp2_sharded``) as manifest
resume points, and an LLM-decoder model trained like DDP. The demo under ``trainer=fsdp2`` (against DDP, kill -9
and resume) is in test_ddp.py, beside the DDP runs it is compared with."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _cli import run_mmtrain
from _multiproc import (BASE, DDP, FSDP2, LLM, SHARDED, WEIGHT_TOLERANCE, final_weights, killed_and_resumed, metrics,
                        mmtrain)
from transformers import AutoModel

import mmtrain.models as _registered  # noqa: F401  (registers the model types with AutoModel)
from mmtrain.engine.callbacks.faults import compare_runs, final_checkpoint


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose data/ holds the tiny demo set (built by the first run)."""
    return tmp_path_factory.mktemp("fsdp2")


@pytest.mark.slow
def test_sharded_fsdp2_checkpoints_are_manifest_resume_points_even_killed_mid_write(workspace: Path) -> None:
    from safetensors.torch import load_file

    from mmtrain.engine.callbacks.checkpoint_io import load_verified, read_manifest

    sharded = workspace / "fsdp2_sharded"
    done = mmtrain(*BASE, *SHARDED, f"run_dir={sharded}", cwd=workspace, name="fsdp2_sharded")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    final = final_checkpoint(sharded)
    assert final.is_dir() and {"__0_0.distcp", "__1_0.distcp", ".metadata", "meta.pt"} <= {p.name for p in final.iterdir()}
    listed = read_manifest(sharded / "checkpoints")["checkpoints"]
    assert set(listed) == {p.name for p in (sharded / "checkpoints").glob("*-step*.ckpt")}  # rotation removed folders
    assert all(entry["files"] for entry in listed.values())
    # killed once every rank's shards of step 6 are on disk, before the folder is committed: resumed from step 4
    killed = killed_and_resumed(workspace, SHARDED, "fsdp2_sharded_killed", kill=(6, "shards_written"),
                                resumed_from="last-step0000004.ckpt")
    assert compare_runs(sharded, killed) == []  # weights, optimizer state, losses, export: bit for bit
    assert not list((killed / "checkpoints").glob(".*.tmp"))  # the uncommitted folder was cleared
    consolidated = workspace / "consolidated"
    exported = run_mmtrain("export", str(final), "--out", str(consolidated), cwd=workspace, timeout=300)
    assert exported.returncode == 0, exported.stderr[-3000:]
    weights, state = load_file(consolidated / "model.safetensors"), load_verified(final)["state_dict"]
    assert weights.keys() == {k.removeprefix("model.") for k in state}
    assert all(torch.equal(v, state[f"model.{k}"]) for k, v in weights.items())
    assert type(AutoModel.from_pretrained(consolidated)).__name__ == "MultimodalModel"




@pytest.mark.slow
def test_fsdp2_trains_an_llm_decoder_model_like_ddp_and_exports_it(workspace: Path) -> None:
    done = {name: mmtrain(*LLM, *strategy, f"run_dir={workspace / name}", cwd=workspace, name=name)
            for name, strategy in (("llm_ddp", DDP), ("llm_fsdp2", FSDP2))}
    for run in done.values():
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert "FSDP2: 5 blocks (GPT2Block, ViTEmbeddings, ViTLayer)" in done["llm_fsdp2"].stdout + done["llm_fsdp2"].stderr
    reference, mine = final_weights(workspace / "llm_ddp"), final_weights(workspace / "llm_fsdp2")
    assert reference.keys() == mine.keys()  # LoRA adapters, the prompt's trainable token rows...
    worst = max(float((v.double() - mine[k].double()).abs().max()) for k, v in reference.items() if v.is_floating_point())
    assert worst <= WEIGHT_TOLERANCE, worst
    ddp, fsdp2 = metrics(workspace / "llm_ddp"), metrics(workspace / "llm_fsdp2")
    for split in ("val", "test"):  # generation and constrained answers ran on the shards, every rank in step
        assert fsdp2[split]["exact_match"] == ddp[split]["exact_match"]
        assert fsdp2[split]["choice_acc"] == ddp[split]["choice_acc"]
        assert fsdp2[split]["perplexity"] == pytest.approx(ddp[split]["perplexity"], rel=1e-4)
    exported = AutoModel.from_pretrained(workspace / "llm_fsdp2" / "export")  # unsharded, manifest-verified
    assert type(exported).__name__ == "LLMModel"
