"""Exact resume after SIGKILL, as a user does it: kill a real ``mmtrain train`` process, run the same
command with ``resume=<run dir>``, and end bit-identical to a run that was never killed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from _cli import run_mmtrain

from mmtrain.engine.callbacks.faults import compare_runs, final_checkpoint, kill_overrides

pytestmark = pytest.mark.slow

# The demo data at its tiny size (real mp4, augmentation, modality dropout, fusion dropout):
# 16 train samples in batches of 2 -> 8 steps per epoch, 2 epochs; a resume point every 3 steps.
BASE = ["experiment=demo", "data.prepare.size=tiny", "data.batch_size=2", "trainer.max_epochs=2",
        "callbacks.progress=null", "callbacks.resume_checkpoint.every_n_train_steps=3", "evaluate_unimodal=false",
        "callbacks.grad_audit.every_n_steps=4"]
SIGKILLED = -9


def mmtrain(*overrides: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_mmtrain("train", *overrides, cwd=cwd)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose data/ holds the tiny demo set (built once by the first run)."""
    return tmp_path_factory.mktemp("resume")


@pytest.fixture(scope="module")
def references(workspace: Path) -> dict[int, Path]:
    """One uninterrupted run per worker count."""
    runs = {}
    for workers in (0, 2):
        run_dir = workspace / f"reference_w{workers}"
        done = mmtrain(*BASE, f"data.num_workers={workers}", f"run_dir={run_dir}", cwd=workspace)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[workers] = run_dir
    return runs


def kill_and_resume(workspace: Path, name: str, step: int, hook: str, workers: int,
                    resume_workers: int | None = None) -> tuple[Path, subprocess.CompletedProcess[str]]:
    run_dir = workspace / name
    killed = mmtrain(*BASE, f"data.num_workers={workers}", *kill_overrides(step, hook), f"run_dir={run_dir}",
                     cwd=workspace)
    assert killed.returncode == SIGKILLED, killed.stderr[-3000:]
    workers = workers if resume_workers is None else resume_workers
    resumed = mmtrain(*BASE, f"data.num_workers={workers}", f"resume={run_dir}", cwd=workspace)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return run_dir, resumed


def test_uninterrupted_runs_repeat_and_worker_count_does_not_matter(references: dict[int, Path]) -> None:
    # Augmentation is seeded per batch from (seed, epoch, ids), not per worker: 0 and 2 workers agree.
    assert compare_runs(references[0], references[2]) == []
    steps = (references[0] / "train_steps.csv").read_text().splitlines()
    assert steps[0] == "epoch,batch,global_step,loss" and len(steps) == 1 + 16


@pytest.mark.parametrize(
    ("hook", "step", "workers", "why"),
    [
        ("train_batch_start", 0, 0, "the very first batch, before any checkpoint"),
        ("train_batch_end", 8, 0, "the last batch of an epoch, before its validation"),
        ("validation_batch", 8, 0, "during validation"),
        ("train_batch_end", 9, 0, "the first batch of the second epoch"),
        ("train_batch_end", 5, 2, "mid-epoch with 2 data workers"),
        ("validation_batch", 8, 2, "during validation with 2 data workers"),
    ],
)
def test_sigkill_then_resume_is_bit_identical(workspace: Path, references: dict[int, Path], hook: str, step: int,
                                              workers: int, why: str) -> None:
    run_dir, resumed = kill_and_resume(workspace, f"{hook}_{step}_w{workers}", step, hook, workers)
    assert compare_runs(references[workers], run_dir) == [], why
    # the replayed steps are not logged twice
    assert (run_dir / "train_steps.csv").read_text() == (references[workers] / "train_steps.csv").read_text()
    if step == 0:
        assert "again from the start" in " ".join((resumed.stdout + resumed.stderr).split())


def test_resume_with_another_worker_count_is_exact(workspace: Path, references: dict[int, Path]) -> None:
    run_dir, _ = kill_and_resume(workspace, "workers_2_then_0", 5, "train_batch_end", workers=2, resume_workers=0)
    assert compare_runs(references[0], run_dir) == []


def test_damaged_newest_checkpoint_is_reported_and_the_previous_one_used(workspace: Path,
                                                                       references: dict[int, Path]) -> None:
    run_dir = workspace / "damaged"
    killed = mmtrain(*BASE, "data.num_workers=0", *kill_overrides(11, "train_batch_end"), f"run_dir={run_dir}",
                     cwd=workspace)
    assert killed.returncode == SIGKILLED
    newest = final_checkpoint(run_dir)
    assert newest.name == "last-step0000009.ckpt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit, same size
    newest.write_bytes(bytes(data))
    resumed = mmtrain(*BASE, "data.num_workers=0", f"resume={run_dir}", cwd=workspace)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    output = " ".join((resumed.stdout + resumed.stderr).split())
    assert "last-step0000009.ckpt" in output and "checksum" in output
    assert "from last-step0000008.ckpt" in output
    assert compare_runs(references[0], run_dir) == []


def test_resume_with_another_batch_size_is_refused(workspace: Path) -> None:
    run_dir = workspace / "batch_size"
    killed = mmtrain(*BASE, *kill_overrides(4, "train_batch_end"), f"run_dir={run_dir}", cwd=workspace)
    assert killed.returncode == SIGKILLED
    before = torch.load(final_checkpoint(run_dir), map_location="cpu", weights_only=True)["global_step"]
    resumed = mmtrain(*BASE, "data.batch_size=4", f"resume={run_dir}", cwd=workspace)
    message = " ".join((resumed.stdout + resumed.stderr).split())
    assert resumed.returncode != 0
    assert "cannot resume exactly" in message and "data.batch_size was 2, now 4" in message
    # nothing was lost: the checkpoint it refused is still there and intact
    assert torch.load(final_checkpoint(run_dir), map_location="cpu", weights_only=True)["global_step"] == before


def test_sigterm_writes_a_checkpoint_exits_143_and_resumes_exactly(workspace: Path,
                                                                   references: dict[int, Path]) -> None:
    run_dir = workspace / "sigterm"
    stopped = mmtrain(*BASE, "data.num_workers=0", *kill_overrides(5, "train_batch_end", "TERM"),
                      f"run_dir={run_dir}", cwd=workspace)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert final_checkpoint(run_dir).name == "last-step0000005.ckpt"  # written at the step it stopped
    assert not (run_dir / "metrics.json").exists()  # never reported as a finished run
    resumed = mmtrain(*BASE, "data.num_workers=0", f"resume={run_dir}", cwd=workspace)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert compare_runs(references[0], run_dir) == []


@pytest.mark.parametrize(("step", "hook", "times", "why"), [
    (5, "train_batch_end", 1, "one Ctrl-C: a resume point at the end of that step, exit 130"),
    (8, "validation_batch", 2, "two Ctrl-C during validation: stopped at once, the last resume point stands"),
])
def test_ctrl_c_saves_exits_130_prints_the_resume_command_and_resumes_exactly(
        workspace: Path, references: dict[int, Path], step: int, hook: str, times: int, why: str) -> None:
    run_dir = workspace / f"sigint_{step}_{times}"
    stopped = mmtrain(*BASE, "data.num_workers=0", *kill_overrides(step, hook, "INT", times), f"run_dir={run_dir}",
                      cwd=workspace)
    output = " ".join(stopped.stdout.split())
    assert stopped.returncode == 130, why + stopped.stderr[-3000:]
    assert "stopped by Ctrl-C (SIGINT)" in output and f"resume={run_dir}" in output, output[-1500:]
    if times == 1:
        assert f"at step {step}: checkpoint written to" in output
        assert final_checkpoint(run_dir).name == f"last-step{step:07d}.ckpt"
    else:
        assert "stopped at once" in output
    assert not (run_dir / "metrics.json").exists()
    command = output[output.index("resume with: ") + len("resume with: "):].split()
    kill = kill_overrides(step, hook, "INT", times)
    assert command == ["mmtrain", "train", *BASE, "data.num_workers=0", *kill, f"resume={run_dir}"]
    resumed = mmtrain(*[a for a in command[2:] if a not in kill], cwd=workspace)  # what was printed, without the switch
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert compare_runs(references[0], run_dir) == [], why


# Lightning loop settings that decide the data position and the validation points (A), and the
# optimizer steps, the end of the run and epochs without validation (B): each resumes bit-identically.
LOOPS = {
    "A": ["trainer.max_epochs=2", "+trainer.limit_train_batches=6", "+trainer.val_check_interval=2",
          "callbacks.resume_checkpoint.every_n_train_steps=2"],
    "B": ["trainer.max_epochs=3", "trainer.accumulate_grad_batches=2", "+trainer.max_steps=10",
          "+trainer.check_val_every_n_epoch=2"],
}


@pytest.fixture(scope="module")
def loop_references(workspace: Path) -> dict[str, Path]:
    runs = {}
    for name, settings in LOOPS.items():
        run_dir = workspace / f"loops_{name}"
        done = mmtrain(*BASE, "data.num_workers=0", *settings, f"run_dir={run_dir}", cwd=workspace)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = run_dir
    return runs


@pytest.mark.parametrize(("loops", "step", "hook", "why"), [
    ("A", 4, "validation_batch", "during a mid-epoch validation (val_check_interval) after limit_train_batches"),
    ("A", 6, "train_batch_start", "the first batch of an epoch that limit_train_batches shortened"),
    ("A", 9, "train_batch_end", "mid-epoch, after a checkpoint written once its validation ended"),
    ("B", 4, "train_batch_start", "after an epoch without validation (check_val_every_n_epoch), accumulating"),
    ("B", 10, "train_batch_end", "at max_steps, mid-epoch: early stopping reads the last validation's value"),
])
def test_loop_settings_resume_bit_identically(workspace: Path, loop_references: dict[str, Path], loops: str,
                                             step: int, hook: str, why: str) -> None:
    run_dir = workspace / f"loops_{loops}_{hook}_{step}"
    killed = mmtrain(*BASE, "data.num_workers=0", *LOOPS[loops], *kill_overrides(step, hook), f"run_dir={run_dir}",
                     cwd=workspace)
    assert killed.returncode == SIGKILLED, killed.stderr[-3000:]
    resumed = mmtrain(*BASE, "data.num_workers=0", *LOOPS[loops], f"resume={run_dir}", cwd=workspace)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert compare_runs(loop_references[loops], run_dir) == [], why


def test_a_changed_loop_setting_is_refused_by_name(workspace: Path, loop_references: dict[str, Path]) -> None:
    run_dir = loop_references["A"]
    before = final_checkpoint(run_dir).read_bytes()
    changed = [s.replace("limit_train_batches=6", "limit_train_batches=4") for s in LOOPS["A"]]
    refused = mmtrain(*BASE, "data.num_workers=0", *changed, f"resume={run_dir}", cwd=workspace)
    message = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode != 0
    assert "cannot resume exactly" in message and "trainer.limit_train_batches was 6, now 4" in message, message[-2000:]
    assert final_checkpoint(run_dir).read_bytes() == before  # the run it refused is untouched
