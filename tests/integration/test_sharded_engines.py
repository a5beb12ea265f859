"""Lightning's sharded engines as a user runs them, on 2 CPU processes (gloo): FSDP2 with sharded checkpoints
(``trainer=fsdp2_sharded``) and DeepSpeed ZeRO (its CPU accelerator). Their checkpoint folders are manifest resume
points: killed (-9) after every rank wrote step 6's folder but before it was committed, a run resumes from step 4
and ends bit-identical to the uninterrupted one; a folder consolidates into one export. ZeRO-3 trains like FSDP2;
FSDP2 and ZeRO-2 train a LoRA LLM-decoder model with generation alike. The demo under ``trainer=fsdp`` (one full
checkpoint file) is in test_ddp.py, beside the DDP runs it is compared with."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _multiproc import (BASE, FSDP2, LLM, PER_RANK_BATCH, SHARDED, WEIGHT_TOLERANCE, killed_and_resumed, metrics,
                        trained)
from safetensors.torch import load_file
from transformers import AutoModel

import mmtrain.models as _registered  # noqa: F401  (registers the model types with AutoModel)
from mmtrain.app.commands.evaluate import export_checkpoint
from mmtrain.engine.callbacks.checkpoint_io import load_verified, read_manifest
from mmtrain.engine.callbacks.faults import _tensor_tree_diffs, compare_runs, final_checkpoint
from mmtrain.engine.sharded_checkpoints import _deepspeed_globals

pytestmark = pytest.mark.long  # the README's second test command (CI runs both)

ZERO3 = ["trainer=deepspeed_zero3", f"data.batch_size={PER_RANK_BATCH}"]
ZERO2 = ["trainer=deepspeed_zero2", f"data.batch_size={PER_RANK_BATCH}"]
KILLED_MID_WRITE = {"kill": (6, "shards_written"), "resumed_from": "last-step0000004.ckpt"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose data/ holds the tiny demo set (built by the first run)."""
    return tmp_path_factory.mktemp("sharded")


@pytest.fixture(scope="module")
def sharded(workspace: Path) -> Path:
    """The demo trained under ``trainer=fsdp2_sharded``, uninterrupted."""
    trained(workspace, BASE, {"fsdp2_sharded": SHARDED})
    return workspace / "fsdp2_sharded"


def consolidated_export(checkpoint: Path, out: Path) -> dict[str, torch.Tensor]:
    """``mmtrain export <folder>``'s function; the exported weights, checked to load with ``AutoModel``."""
    export_checkpoint(checkpoint, out)
    assert type(AutoModel.from_pretrained(out)).__name__ == "MultimodalModel"
    return load_file(out / "model.safetensors")


@pytest.mark.slow
def test_sharded_fsdp2_checkpoints_are_manifest_resume_points_even_killed_mid_write(workspace: Path,
                                                                                    sharded: Path) -> None:
    final = final_checkpoint(sharded)
    assert final.is_dir() and {"__0_0.distcp", "__1_0.distcp", ".metadata", "meta.pt"} <= {p.name for p in final.iterdir()}
    listed = read_manifest(sharded / "checkpoints")["checkpoints"]
    assert set(listed) == {p.name for p in (sharded / "checkpoints").glob("*-step*.ckpt")}  # rotation removed folders
    assert all(entry["files"] for entry in listed.values())
    killed = killed_and_resumed(workspace, SHARDED, "fsdp2_sharded_killed", **KILLED_MID_WRITE)
    assert compare_runs(sharded, killed) == []  # weights, optimizer state, losses, export: bit for bit
    assert not list((killed / "checkpoints").glob(".*.tmp"))  # the uncommitted folder was cleared
    weights, state = consolidated_export(final, workspace / "consolidated"), load_verified(final)["state_dict"]
    assert weights.keys() == {k.removeprefix("model.") for k in state}
    assert all(torch.equal(v, state[f"model.{k}"]) for k, v in weights.items())


def optimizer_files(checkpoint: Path) -> dict[str, object]:
    """Every rank's ZeRO-partitioned optimizer state in a DeepSpeed checkpoint folder (less the fp32 run's constant
    loss-scaler object)."""
    with torch.serialization.safe_globals(_deepspeed_globals()):
        states = {f.name: torch.load(f, map_location="cpu", weights_only=True)["optimizer_state_dict"]
                  for f in sorted((checkpoint / "checkpoint").glob("*optim_states.pt"))}
    return {name: {k: v for k, v in state.items() if k != "loss_scaler"} for name, state in states.items()}


@pytest.mark.slow
def test_zero3_trains_like_fsdp2_and_resumes_bit_identically_after_a_kill_mid_checkpoint(workspace: Path,
                                                                                         sharded: Path) -> None:
    trained(workspace, BASE, {"zero3": ZERO3})
    reference = load_verified(final_checkpoint(sharded))["state_dict"]  # FSDP2's shards, consolidated
    final = final_checkpoint(workspace / "zero3")
    zero3 = load_verified(final)["state_dict"]  # DeepSpeed's partitions, consolidated with zero_to_fp32
    assert zero3.keys() == reference.keys()
    worst = max(float((v.double() - reference[k].double()).abs().max()) for k, v in zero3.items()
                if v.is_floating_point())
    assert worst <= WEIGHT_TOLERANCE, worst  # the same training, partitioned another way
    assert {f.name for f in (final / "checkpoint").iterdir()} == {
        f"zero_pp_rank_{r}_mp_rank_00_{kind}_states.pt" for r in (0, 1) for kind in ("model", "optim")}
    listed = read_manifest(workspace / "zero3" / "checkpoints")["checkpoints"]
    assert all("checkpoint/zero_pp_rank_1_mp_rank_00_optim_states.pt" in e["files"] for e in listed.values())
    killed = killed_and_resumed(workspace, ZERO3, "zero3_killed", **KILLED_MID_WRITE)
    assert compare_runs(workspace / "zero3", killed) == []  # weights, losses, export: bit for bit
    assert _tensor_tree_diffs(optimizer_files(final), optimizer_files(final_checkpoint(killed)), "optimizer") == []
    weights = consolidated_export(final, workspace / "consolidated_zero3")
    assert all(torch.equal(v, zero3[f"model.{k}"]) for k, v in weights.items()) and len(weights) == len(zero3)


@pytest.mark.slow
def test_fsdp2_and_zero2_train_an_llm_decoder_model_alike(workspace: Path) -> None:
    # two engines partitioning differently; each against the unsharded model: tests/engine/test_sharding.py (FSDP2)
    output = trained(workspace, LLM, {"llm_fsdp2": FSDP2, "llm_zero2": ZERO2})
    assert "FSDP2: 5 blocks (GPT2Block, ViTEmbeddings, ViTLayer)" in output["llm_fsdp2"]
    fsdp2, zero2 = (load_verified(final_checkpoint(workspace / n))["state_dict"] for n in ("llm_fsdp2", "llm_zero2"))
    assert fsdp2.keys() == zero2.keys()  # LoRA adapters, the prompt's trainable token rows... (ZeRO-2: zero_to_fp32)
    worst = max(float((v.double() - zero2[k].double()).abs().max()) for k, v in fsdp2.items() if v.is_floating_point())
    assert worst <= WEIGHT_TOLERANCE, worst
    first, second = metrics(workspace / "llm_fsdp2"), metrics(workspace / "llm_zero2")
    for split in ("val", "test"):  # generation and constrained answers, every rank in step
        assert first[split]["exact_match"] == second[split]["exact_match"]
        assert first[split]["choice_acc"] == second[split]["choice_acc"]
        assert first[split]["perplexity"] == pytest.approx(second[split]["perplexity"], rel=1e-4)
    for name in ("llm_fsdp2", "llm_zero2"):  # unsharded exports, manifest-verified
        assert type(AutoModel.from_pretrained(workspace / name / "export")).__name__ == "LLMModel"
