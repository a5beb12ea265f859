"""What the multi-process integration tests share: the demo command with nothing random left, the 2-process
strategies, running ``mmtrain train`` as a user does, and killing a run as a scheduler would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from _cli import run_mmtrain

from mmtrain.engine.callbacks.faults import kill_overrides

# The real demo set at its tiny size (mp4 + label JSON: 16 train, 8 val, 8 test samples), video and
# audio towers + bottleneck fusion, with nothing random left in training. A resume point every 3 steps.
BASE = ["experiment=demo", "data.prepare.size=tiny", "data.num_workers=0", "data.processor.augment=null",
        "data.processor.modality_dropout=null", "model.fusion.dropout=0", "model.encoders.video.dropout=0",
        "model.encoders.audio.dropout=0", "~model/encoders/text", "trainer.max_epochs=2", "callbacks.progress=null",
        "evaluate_unimodal=false", "callbacks.resume_checkpoint.every_n_train_steps=3"]
PER_RANK_BATCH = 2
DDP = ["trainer=ddp_cpu", f"data.batch_size={PER_RANK_BATCH}"]
ONE = [f"data.batch_size={2 * PER_RANK_BATCH}"]
# Weights of the 1- and 2-process runs may differ only by float rounding: under DDP each rank averages
# the loss over its half batch and gloo averages the two gradients, a different summation order than
# one mean over the whole batch (then Adam's update, 8 steps). Measured: 3.9e-6 (weights up to ~1.0).
# One epoch less training moves them by 1.6e-2, a different global batch by 2.5e-2.
WEIGHT_TOLERANCE = 1e-4
SIGKILLED = -9
TIMES: dict[str, float] = {}


FSDP2 = ["trainer=fsdp2", f"data.batch_size={PER_RANK_BATCH}"]
SHARDED = ["trainer=fsdp2_sharded", f"data.batch_size={PER_RANK_BATCH}"]
# A tiny LLM-decoder model: a ViT's pseudo-tokens in a GPT-2 with LoRA, instruction-tuned to write answers (greedy
# generation and answers constrained to a set at every evaluation), activations recomputed in the backward pass.
LLM = ["experiment=vqa_digits", "data.prepare.size=tiny", "data.num_workers=0", "trainer.max_epochs=1",
       "callbacks.progress=null", "+model.decoder.config.resid_pdrop=0", "+model.decoder.config.embd_pdrop=0",
       "+model.decoder.config.attn_pdrop=0", "model.lora={r:4,alpha:8,dropout:0,target_modules:[c_attn]}",
       "model.gradient_checkpointing=true"]


def mmtrain(*overrides: str, cwd: Path, name: str) -> subprocess.CompletedProcess[str]:
    started = time.perf_counter()
    done = run_mmtrain("train", *overrides, cwd=cwd, timeout=300)
    TIMES[name] = round(time.perf_counter() - started, 1)
    return done


def killed_ddp_run(*overrides: str, cwd: Path, name: str) -> int:
    """Run a DDP command whose rank 0 kills itself (KillSwitch); then end the job as a scheduler would:
    the other rank, left waiting in a collective, is killed with its process group. Returns rank 0's code."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "mmtrain.app.cli", "train", *overrides], cwd=cwd, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    code = process.wait(timeout=300)
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the group of the session started above: its rank 1
    except ProcessLookupError:
        pass
    for _ in range(100):  # until nothing of that job is left
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    TIMES[name] = round(time.perf_counter() - started, 1)
    return code


def killed_and_resumed(workspace: Path, strategy: list[str], name: str, kill: tuple[int, str] = (7, "train_batch_end"),
                       resumed_from: str = "last-step0000006.ckpt") -> Path:
    """A 2-process run killed (-9) at ``kill`` (step, KillSwitch hook; by default after step 7 of 4 an epoch:
    mid-epoch 2), then resumed (by default from step 6)."""
    run_dir = workspace / name
    code = killed_ddp_run(*BASE, *strategy, *kill_overrides(*kill), f"run_dir={run_dir}", cwd=workspace, name=name)
    assert code == SIGKILLED
    resumed = mmtrain(*BASE, *strategy, f"resume={run_dir}", cwd=workspace, name=f"{name}_resumed")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-4000:]
    assert metrics(run_dir)["resumed_from"] == resumed_from
    return run_dir


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def trained(workspace: Path, command: list[str], strategies: dict[str, list[str]]) -> dict[str, str]:
    """Train ``command`` once per strategy (run directory ``workspace/<name>``); each run's output, all succeeded."""
    out = {}
    for name, strategy in strategies.items():
        done = mmtrain(*command, *strategy, f"run_dir={workspace / name}", cwd=workspace, name=name)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
        out[name] = done.stdout + done.stderr
    return out


def assert_killed_run_resumes_exactly(command: list[str], *, cwd: Path, kill_at: int, resumed_from: str,
                                      name: str) -> None:
    """``mmtrain train`` run whole; the same command killed (-9) at step ``kill_at`` and resumed (from the
    checkpoint ``resumed_from``): both runs end bit-identical (weights, optimizer state, every step's loss)."""
    from mmtrain.engine.callbacks.faults import compare_runs

    whole = run_mmtrain("train", *command, f"run_dir={cwd / 'whole'}", cwd=cwd, timeout=300)
    assert whole.returncode == 0, whole.stdout[-2000:] + whole.stderr[-3000:]
    killed = cwd / "killed"
    assert killed_ddp_run(*command, *kill_overrides(kill_at), f"run_dir={killed}", cwd=cwd, name=name) == SIGKILLED
    resumed = run_mmtrain("train", *command, f"resume={killed}", cwd=cwd, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert json.loads((killed / "metrics.json").read_text())["resumed_from"] == resumed_from
    assert compare_runs(cwd / "whole", killed) == []
