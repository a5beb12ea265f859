"""DeepSpeed ZeRO through Lightning as a user runs it, on 2 CPU processes (DeepSpeed's CPU accelerator over gloo):
ZeRO-3 trains the demo like FSDP2 and resumes bit-identically after kill -9 in the middle of a checkpoint write;
its checkpoint folders are manifest resume points that `mmtrain export` consolidates; ZeRO-2 trains an LLM-decoder
model (evaluation re-initialises DeepSpeed: transformers' output hooks must survive it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _cli import run_mmtrain
from _multiproc import BASE, FSDP2, LLM, PER_RANK_BATCH, WEIGHT_TOLERANCE, final_weights, killed_and_resumed, mmtrain
from safetensors.torch import load_file
from transformers import AutoModel

import mmtrain.models as _registered  # noqa: F401  (registers the model types with AutoModel)
from mmtrain.engine.callbacks.checkpoint_io import load_verified, read_manifest
from mmtrain.engine.callbacks.faults import _tensor_tree_diffs, compare_runs, final_checkpoint
from mmtrain.engine.sharded_checkpoints import _deepspeed_globals

ZERO3 = ["trainer=deepspeed_zero3", f"data.batch_size={PER_RANK_BATCH}"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose data/ holds the tiny demo set (built by the first run)."""
    return tmp_path_factory.mktemp("deepspeed")


def optimizer_files(checkpoint: Path) -> dict[str, object]:
    """Every rank's ZeRO-partitioned optimizer state in a DeepSpeed checkpoint folder (less the fp32 run's constant
    loss-scaler object)."""
    with torch.serialization.safe_globals(_deepspeed_globals()):
        states = {f.name: torch.load(f, map_location="cpu", weights_only=True)["optimizer_state_dict"]
                  for f in sorted((checkpoint / "checkpoint").glob("*optim_states.pt"))}
    return {name: {k: v for k, v in state.items() if k != "loss_scaler"} for name, state in states.items()}  # an object


@pytest.mark.slow
def test_zero3_trains_like_fsdp2_and_resumes_bit_identically_after_a_kill_mid_checkpoint(workspace: Path) -> None:
    runs = {name: mmtrain(*BASE, *strategy, f"run_dir={workspace / name}", cwd=workspace, name=name)
            for name, strategy in (("zero3", ZERO3), ("fsdp2", FSDP2))}
    for run in runs.values():
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    reference = final_weights(workspace / "fsdp2")
    zero3 = load_verified(final_checkpoint(workspace / "zero3"))["state_dict"]  # consolidated with zero_to_fp32
    assert zero3.keys() == reference.keys()
    worst = max(float((v.double() - reference[k].double()).abs().max()) for k, v in zero3.items()
                if v.is_floating_point())
    assert worst <= WEIGHT_TOLERANCE, worst  # the same training, partitioned another way
    final = final_checkpoint(workspace / "zero3")
    assert {f.name for f in (final / "checkpoint").iterdir()} == {
        f"zero_pp_rank_{r}_mp_rank_00_{kind}_states.pt" for r in (0, 1) for kind in ("model", "optim")}
    listed = read_manifest(workspace / "zero3" / "checkpoints")["checkpoints"]
    assert all("checkpoint/zero_pp_rank_1_mp_rank_00_optim_states.pt" in e["files"] for e in listed.values())
    # killed once both ranks wrote step 6's folder, before it was committed: resumed from step 4
    killed = killed_and_resumed(workspace, ZERO3, "zero3_killed", kill=(6, "shards_written"),
                                resumed_from="last-step0000004.ckpt")
    assert compare_runs(workspace / "zero3", killed) == []  # weights, losses, export: bit for bit
    assert _tensor_tree_diffs(optimizer_files(final), optimizer_files(final_checkpoint(killed)), "optimizer") == []
    consolidated = workspace / "consolidated"
    done = run_mmtrain("export", str(final), "--out", str(consolidated), cwd=workspace, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    weights = load_file(consolidated / "model.safetensors")
    assert all(torch.equal(v, zero3[f"model.{k}"]) for k, v in weights.items()) and len(weights) == len(zero3)
    assert type(AutoModel.from_pretrained(consolidated)).__name__ == "MultimodalModel"


@pytest.mark.slow
def test_zero2_trains_an_llm_decoder_model_and_evaluates_it_with_generation(workspace: Path) -> None:
    done = mmtrain(*LLM, "trainer=deepspeed_zero2", f"data.batch_size={PER_RANK_BATCH}",
                   f"run_dir={workspace / 'llm_zero2'}", cwd=workspace, name="llm_zero2")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "exact_match" in done.stdout and "choice_acc" in done.stdout  # generated after DeepSpeed's re-init
    exported = AutoModel.from_pretrained(workspace / "llm_zero2" / "export")  # LoRA merged, manifest-verified
    assert type(exported).__name__ == "LLMModel"
    state = load_verified(final_checkpoint(workspace / "llm_zero2"))["state_dict"]  # consolidated with zero_to_fp32
    assert any("lora_A" in k for k in state) and "model.decoder.lm.transformer.wte.token_adapter.base_layer.weight" in state
