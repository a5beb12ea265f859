"""Atomic checkpoints with a checksummed manifest, and SIGTERM -> checkpoint + exit 143.

Real files, real ``torch.save``, real crashes: each crash test forks a child process that dies
(``os._exit``) at an exact point, found with an audit hook on the real ``os.replace`` / ``open`` /
``unlink`` calls; the full-disk test lowers RLIMIT_FSIZE in a child for real (EFBIG from write()).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mmtrain.engine.callbacks.checkpoint_io import (
    MANIFEST_NAME,
    AtomicCheckpointIO,
    CheckpointCorrupt,
    CheckpointWriteError,
    UnsafeCheckpoint,
    read_manifest,
)
from mmtrain.engine.callbacks.checkpoint_manifest import find_resume_checkpoint, verify_checkpoint
from mmtrain.engine.callbacks.signals import EXIT_SIGTERM, SigtermCheckpoint, TrainingTerminated, exit_on_sigterm

ROOT = Path(__file__).resolve().parents[2]


def state(step: int, size: int = 64) -> dict:
    """A Lightning-shaped checkpoint: tensors, nested optimizer state, plain Python values."""
    torch.manual_seed(step)
    return {"epoch": step // 4, "global_step": step, "pytorch-lightning_version": "2.6.6",
            "state_dict": {"w": torch.randn(size), "b": torch.zeros(3)},
            "optimizer_states": [{"state": {0: {"exp_avg": torch.randn(size)}}, "param_groups": [{"lr": 0.1}]}],
            "loops": {"fit_loop": {"epoch_progress": {"total": {"completed": step // 4}}}},
            "callbacks": {"ModelCheckpoint{}": {"best_model_score": torch.tensor(0.5), "dirpath": "x"}}}


def tmp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def io() -> AtomicCheckpointIO:
    return AtomicCheckpointIO()


@pytest.fixture
def ckdir(tmp_path: Path) -> Path:
    return tmp_path / "run" / "checkpoints"


@pytest.fixture
def warnings_of_checkpoint_io(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog for the module's warnings (``mmtrain.app.cli.main`` stops ``mmtrain`` logs reaching root)."""
    package = logging.getLogger("mmtrain")
    propagate, package.propagate = package.propagate, True
    caplog.set_level(logging.WARNING, logger="mmtrain.engine.callbacks.checkpoint_io")
    yield caplog
    package.propagate = propagate


# -- save / verify / load ------------------------------------------------------------------------


def test_atomic_save_records_size_sha256_step_and_loads_back(io: AtomicCheckpointIO, ckdir: Path) -> None:
    before = time.time()
    io.save_checkpoint(state(3), ckdir / "a.ckpt")
    io.save_checkpoint(state(4), ckdir / "last.ckpt")
    io.save_checkpoint(state(8), ckdir / "last.ckpt")  # overwrite: the entry follows the new content
    entries = json.loads((ckdir / MANIFEST_NAME).read_text())["checkpoints"]
    assert sorted(entries) == ["a.ckpt", "last.ckpt"]
    for name, step in (("a.ckpt", 3), ("last.ckpt", 8)):
        data = (ckdir / name).read_bytes()
        entry = entries[name]
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
        assert (entry["global_step"], entry["epoch"]) == (step, step // 4) and "pending" not in entry
        assert before <= entry["written_at"] <= time.time()
        verify_checkpoint(ckdir / name)
        loaded = io.load_checkpoint(ckdir / name)
        assert torch.equal(loaded["state_dict"]["w"], state(step)["state_dict"]["w"])
        assert loaded["optimizer_states"][0]["param_groups"] == [{"lr": 0.1}]
    assert tmp_files(ckdir) == []
    assert oct((ckdir / "a.ckpt").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_truncated_checkpoint_is_refused_naming_file_and_sizes(io: AtomicCheckpointIO, ckdir: Path) -> None:
    io.save_checkpoint(state(1), ckdir / "last.ckpt")
    full = (ckdir / "last.ckpt").stat().st_size
    with open(ckdir / "last.ckpt", "r+b") as handle:
        handle.truncate(full - 100)
    for check in (verify_checkpoint, io.load_checkpoint):
        with pytest.raises(CheckpointCorrupt) as err:
            check(ckdir / "last.ckpt")
        assert str(ckdir / "last.ckpt") in str(err.value)
        assert f"truncated: expected {full} bytes got {full - 100}" in str(err.value)


def test_one_flipped_byte_is_a_checksum_mismatch(io: AtomicCheckpointIO, ckdir: Path) -> None:
    io.save_checkpoint(state(1), ckdir / "last.ckpt")
    data = bytearray((ckdir / "last.ckpt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (ckdir / "last.ckpt").write_bytes(bytes(data))
    with pytest.raises(CheckpointCorrupt, match="last.ckpt is damaged \\(checksum mismatch"):
        io.load_checkpoint(ckdir / "last.ckpt")


def test_a_file_missing_from_the_manifest_is_refused(io: AtomicCheckpointIO, ckdir: Path) -> None:
    io.save_checkpoint(state(1), ckdir / "a.ckpt")
    torch.save(state(2), ckdir / "copied.ckpt")  # valid torch file, never committed through the plugin
    with pytest.raises(CheckpointCorrupt, match=f"copied.ckpt is damaged \\(missing from .*{MANIFEST_NAME}"):
        io.load_checkpoint(ckdir / "copied.ckpt")
    with pytest.raises(FileNotFoundError, match="Checkpoint file not found"):
        io.load_checkpoint(ckdir / "nothing.ckpt")
    with pytest.raises(ValueError, match="weights_only=True only"):
        io.load_checkpoint(ckdir / "a.ckpt", weights_only=False)


# -- resume choice -----------------------------------------------------------------------------


def test_find_resume_falls_back_to_the_previous_valid_one_with_a_warning(
    io: AtomicCheckpointIO, ckdir: Path, warnings_of_checkpoint_io: pytest.LogCaptureFixture
) -> None:
    io.save_checkpoint(state(4), ckdir / "best-step4.ckpt")
    io.save_checkpoint(state(8), ckdir / "last.ckpt")
    assert find_resume_checkpoint(ckdir) == ckdir / "last.ckpt"
    assert warnings_of_checkpoint_io.records == []
    data = bytearray((ckdir / "last.ckpt").read_bytes())
    data[-50] ^= 0xFF
    (ckdir / "last.ckpt").write_bytes(bytes(data))
    assert find_resume_checkpoint(ckdir) == ckdir / "best-step4.ckpt"
    [record] = warnings_of_checkpoint_io.records
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith("checkpoints/last.ckpt is damaged (checksum mismatch")
    assert record.getMessage().endswith("falling back to checkpoints/best-step4.ckpt")
    (ckdir / "best-step4.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match=r"no valid checkpoint in .*last.ckpt: checksum mismatch.*"
                                                r"best-step4.ckpt: file missing"):
        find_resume_checkpoint(ckdir)
    with pytest.raises(FileNotFoundError, match=f"no {MANIFEST_NAME} in"):
        find_resume_checkpoint(ckdir.parent)


def test_newest_is_chosen_by_global_step_then_write_time(io: AtomicCheckpointIO, ckdir: Path) -> None:
    io.save_checkpoint(state(9), ckdir / "z-old-name.ckpt")
    io.save_checkpoint(state(5), ckdir / "later-but-earlier-step.ckpt")
    assert find_resume_checkpoint(ckdir).name == "z-old-name.ckpt"
    io.save_checkpoint(state(9), ckdir / "a-same-step-newer.ckpt")
    assert find_resume_checkpoint(ckdir).name == "a-same-step-newer.ckpt"


def _bytes_read() -> int:
    return int(next(line for line in Path("/proc/self/io").read_text().splitlines() if line.startswith("rchar"))
               .split()[1])


def test_a_resume_reads_its_checkpoint_to_hash_it_once(io: AtomicCheckpointIO, ckdir: Path) -> None:
    io.save_checkpoint(state(4, size=2_000_000), ckdir / "last.ckpt")  # 16 MB of tensors
    size = (ckdir / "last.ckpt").stat().st_size
    before = _bytes_read()
    chosen = find_resume_checkpoint(ckdir)
    loaded = io.load_checkpoint(chosen)
    assert loaded["global_step"] == 4
    assert _bytes_read() - before < 2.5 * size  # chosen by its hash, then loaded: 2 reads, not 3 (hash, hash, load)
    find_resume_checkpoint(ckdir)
    raw = bytearray((ckdir / "last.ckpt").read_bytes())
    raw[-100] ^= 0xFF
    (ckdir / "last.ckpt.new").write_bytes(bytes(raw))
    os.replace(ckdir / "last.ckpt.new", ckdir / "last.ckpt")  # another file where the chosen one was: hashed again
    with pytest.raises(CheckpointCorrupt, match="checksum mismatch"):
        io.load_checkpoint(ckdir / "last.ckpt")


# -- removal -----------------------------------------------------------------------------------


def test_remove_deletes_only_files_listed_in_this_folders_manifest(
    io: AtomicCheckpointIO, ckdir: Path, tmp_path: Path, warnings_of_checkpoint_io: pytest.LogCaptureFixture
) -> None:
    io.save_checkpoint(state(1), ckdir / "old.ckpt")
    io.save_checkpoint(state(2), ckdir / "new.ckpt")
    (ckdir / "foreign.ckpt").write_bytes(b"another run's file")
    other_run = tmp_path / "other" / "checkpoints"
    other_run.mkdir(parents=True)
    (other_run / "old.ckpt").write_bytes(b"not ours")

    io.remove_checkpoint(ckdir / "old.ckpt")
    io.remove_checkpoint(ckdir / "foreign.ckpt")
    io.remove_checkpoint(other_run / "old.ckpt")

    assert not (ckdir / "old.ckpt").exists()
    assert (ckdir / "foreign.ckpt").read_bytes() == b"another run's file"
    assert (other_run / "old.ckpt").read_bytes() == b"not ours"
    assert list(other_run.iterdir()) == [other_run / "old.ckpt"]  # not even a lock file appeared there
    assert sorted(read_manifest(ckdir)["checkpoints"]) == ["new.ckpt"]
    verify_checkpoint(ckdir / "new.ckpt")
    messages = [r.getMessage() for r in warnings_of_checkpoint_io.records]
    assert any("not removing" in m and "foreign.ckpt" in m and "not listed" in m for m in messages)
    assert any("not removing" in m and "other/checkpoints/old.ckpt" in m for m in messages)


# -- failures while writing ----------------------------------------------------------------------


def test_unwritable_run_dir_raises_naming_the_path(io: AtomicCheckpointIO, ckdir: Path, tmp_path: Path) -> None:
    io.save_checkpoint(state(1), ckdir / "last.ckpt")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the run directory should be")  # root ignores chmod; this it cannot
    with pytest.raises(CheckpointWriteError) as err:
        io.save_checkpoint(state(2), blocker / "checkpoints" / "last.ckpt")
    message = str(err.value)
    assert str(blocker / "checkpoints" / "last.ckpt") in message and "choose another run_dir=" in message
    assert isinstance(err.value, OSError) and err.value.errno is not None
    verify_checkpoint(ckdir / "last.ckpt")


def test_content_a_weights_only_load_refuses_is_never_committed(io: AtomicCheckpointIO, ckdir: Path) -> None:
    import numpy as np

    io.save_checkpoint(state(1), ckdir / "last.ckpt")
    manifest = (ckdir / MANIFEST_NAME).read_bytes()
    bad = {**state(2), "rng": np.random.get_state()}
    with pytest.raises(UnsafeCheckpoint, match=r"refusing to write checkpoint .*last.ckpt.*numpy"):
        io.save_checkpoint(bad, ckdir / "last.ckpt")
    assert (ckdir / MANIFEST_NAME).read_bytes() == manifest and tmp_files(ckdir) == []
    assert io.load_checkpoint(ckdir / "last.ckpt")["global_step"] == 1


def in_child(body: Callable[[], object], hook: Callable[[str, tuple], None] | None = None) -> tuple[int, dict]:
    """Run ``body`` in a forked child process (a real process that really dies when ``hook`` says so).

    Returns the child's exit status and what it raised (type, errno, message) if it raised.
    """
    handle, name = tempfile.mkstemp(suffix=".json")
    os.close(handle)
    report = Path(name)
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            if hook is not None:
                sys.addaudithook(hook)
            body()
        except BaseException as err:  # noqa: BLE001
            report.write_text(json.dumps({"type": type(err).__name__, "errno": getattr(err, "errno", None),
                                          "message": str(err)}))
        finally:
            os._exit(0)
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    raised = json.loads(report.read_text() or "{}")
    report.unlink()
    return status, raised


def die_at(event: str, path: Path, then: str | None = None) -> Callable[[str, tuple], None]:
    """Audit hook: exit 9 on ``event`` for ``path`` (before the call runs), or at the next ``then`` event."""
    seen = []

    def hook(name: str, args: tuple) -> None:
        if name == event and str(args[1] if event == "os.rename" else args[0]) == str(path):
            if then is None:
                os._exit(9)
            seen.append(name)
        elif then is not None and seen and name == then:
            os._exit(9)

    return hook


@pytest.fixture
def two_saved(io: AtomicCheckpointIO, ckdir: Path) -> Path:
    io.save_checkpoint(state(1), ckdir / "a.ckpt")
    io.save_checkpoint(state(2), ckdir / "last.ckpt")
    return ckdir


def test_full_disk_mid_save_raises_cleans_up_and_keeps_previous(io: AtomicCheckpointIO, two_saved: Path) -> None:
    big = state(3, size=1_000_000)  # 8 MB; the child may write 200 kB per file, like a nearly full disk

    def fill_the_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        io.save_checkpoint(big, two_saved / "last.ckpt")

    status, raised = in_child(fill_the_disk)
    assert status == 0 and raised["type"] == "CheckpointWriteError" and raised["errno"] == errno.EFBIG
    assert str(two_saved / "last.ckpt") in raised["message"] and "run_dir=" in raised["message"]
    assert tmp_files(two_saved) == []
    for name, step in (("a.ckpt", 1), ("last.ckpt", 2)):
        verify_checkpoint(two_saved / name)
        assert io.load_checkpoint(two_saved / name)["global_step"] == step
    assert find_resume_checkpoint(two_saved).name == "last.ckpt"


def test_crash_before_the_rename_keeps_the_old_file_valid(io: AtomicCheckpointIO, two_saved: Path) -> None:
    target = two_saved / "last.ckpt"
    new = state(3)
    status, _ = in_child(lambda: io.save_checkpoint(new, target), die_at("os.rename", target))
    assert status == 9
    verify_checkpoint(target)
    assert io.load_checkpoint(target)["global_step"] == 2
    assert len(tmp_files(two_saved)) == 1  # the dead save's temporary file...
    io.save_checkpoint(state(4), two_saved / "b.ckpt")
    assert tmp_files(two_saved) == []  # ...is removed by the next save, its process being gone
    assert find_resume_checkpoint(two_saved).name == "b.ckpt"


def test_crash_after_the_rename_leaves_the_new_file_valid(io: AtomicCheckpointIO, two_saved: Path) -> None:
    target = two_saved / "last.ckpt"
    new = state(3)
    # the next call after the rename opens the folder to fsync it: die there, before the commit
    status, _ = in_child(lambda: io.save_checkpoint(new, target), die_at("os.rename", target, then="open"))
    assert status == 9
    assert "pending" in read_manifest(two_saved)["checkpoints"]["last.ckpt"]
    verify_checkpoint(target)
    assert io.load_checkpoint(target)["global_step"] == 3
    assert find_resume_checkpoint(two_saved) == target


def test_crash_mid_removal_is_never_used_and_finished_later(io: AtomicCheckpointIO, two_saved: Path) -> None:
    target = two_saved / "a.ckpt"
    status, _ = in_child(lambda: io.remove_checkpoint(target), die_at("os.remove", target))
    assert status == 9 and target.exists()  # died just before the unlink
    with pytest.raises(CheckpointCorrupt, match="marked for deletion"):
        verify_checkpoint(target)
    io.save_checkpoint(state(5), two_saved / "last.ckpt")
    assert not target.exists() and sorted(read_manifest(two_saved)["checkpoints"]) == ["last.ckpt"]


# -- through Lightning -------------------------------------------------------------------------


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        loss = nn.functional.cross_entropy(self.layer(x), y)
        self.log("loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.layer(x), y))

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.Adam(self.parameters(), lr=0.01)


def loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 4, generator=generator), torch.randint(0, 2, (32,), generator=generator))
    return DataLoader(data, batch_size=4)


def tiny_trainer(root: Path, epochs: int, *callbacks: pl.Callback) -> pl.Trainer:
    return pl.Trainer(max_epochs=epochs, plugins=[AtomicCheckpointIO()], callbacks=list(callbacks), logger=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                      num_sanity_val_steps=0, accelerator="cpu", devices=1)


def test_lightning_rotation_and_resume_go_through_the_manifest(tmp_path: Path, one_thread: None) -> None:
    ckdir = tmp_path / "checkpoints"
    ckdir.mkdir()
    (ckdir / "someone-elses.ckpt").write_bytes(b"keep me")
    every = ModelCheckpoint(dirpath=ckdir, filename="step{step}", every_n_train_steps=3, save_top_k=2,
                            monitor="step", mode="max", save_last=True)
    tiny_trainer(tmp_path, 2, every).fit(Tiny(), loader(), loader())
    listed = set(read_manifest(ckdir)["checkpoints"])
    on_disk = {p.name for p in ckdir.glob("*.ckpt")}
    assert listed == on_disk - {"someone-elses.ckpt"} and len(listed) == 3  # top-2 + last; rotated ones gone
    assert (ckdir / "someone-elses.ckpt").read_bytes() == b"keep me"

    resumed = tiny_trainer(tmp_path, 3)
    resumed.fit(Tiny(), loader(), loader(), ckpt_path=str(ckdir / "last.ckpt"), weights_only=True)
    assert resumed.global_step == 24  # 8 steps per epoch: continued after epoch 2, not restarted
    with pytest.raises(ValueError, match="weights_only=True only"):
        tiny_trainer(tmp_path, 3).fit(Tiny(), loader(), ckpt_path=str(ckdir / "last.ckpt"), weights_only=False)
    data = bytearray((ckdir / "last.ckpt").read_bytes())
    data[100] ^= 0x10
    (ckdir / "last.ckpt").write_bytes(bytes(data))
    with pytest.raises(CheckpointCorrupt, match="checksum mismatch"):
        tiny_trainer(tmp_path, 4).fit(Tiny(), loader(), ckpt_path=str(ckdir / "last.ckpt"))


def test_a_full_disk_during_fit_ends_the_run_with_the_write_error(tmp_path: Path, one_thread: None) -> None:
    ckdir = tmp_path / "checkpoints"

    def fit_on_a_full_disk() -> None:
        signal.alarm(120)  # a hung child would otherwise hang the test
        torch.set_num_threads(1)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))  # smaller than any checkpoint
        tiny_trainer(tmp_path, 1, ModelCheckpoint(dirpath=ckdir, save_last=True)).fit(Tiny(), loader())

    status, raised = in_child(fit_on_a_full_disk)
    assert status == 0 and raised["type"] == "CheckpointWriteError" and raised["errno"] == errno.EFBIG
    assert f"could not write checkpoint {ckdir}" in raised["message"] and "run_dir=" in raised["message"]
    assert list(ckdir.iterdir()) == []  # nothing half-written, no temporary file, no manifest


class SigtermAt(pl.Callback):
    """Sends this process SIGTERM at a training step (``None``) or when training ends (``"end"``)."""

    def __init__(self, step: int | str) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *_: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_end(self, trainer: pl.Trainer, *_: object) -> None:
        if self.step == "end":
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture
def sigterm_guard() -> Iterator[None]:
    """A no-op SIGTERM handler under Lightning's (which chains it): a stray signal cannot kill pytest."""
    before = signal.signal(signal.SIGTERM, lambda *_: None)
    yield
    signal.signal(signal.SIGTERM, before)


def test_sigterm_mid_fit_saves_that_step_and_exits_143(tmp_path: Path, sigterm_guard: None, one_thread: None) -> None:
    trainer = tiny_trainer(tmp_path, 3, SigtermCheckpoint(tmp_path / "checkpoints"), SigtermAt(5))
    with pytest.raises(TrainingTerminated) as stopped, exit_on_sigterm(trainer):
        trainer.fit(Tiny(), loader())
    assert stopped.value.code == EXIT_SIGTERM == 143 and stopped.value.global_step == 5
    assert stopped.value.checkpoint == tmp_path / "checkpoints" / "last-step0000005.ckpt"
    assert "stopped by SIGTERM at step 5" in str(stopped.value)
    verify_checkpoint(stopped.value.checkpoint)
    saved = AtomicCheckpointIO().load_checkpoint(stopped.value.checkpoint)
    assert saved["global_step"] == 5 and saved["optimizer_states"] and saved["loops"]


def test_sigterm_after_the_last_check_stops_before_the_next_stage(
    tmp_path: Path, sigterm_guard: None, one_thread: None
) -> None:
    trainer = tiny_trainer(tmp_path, 1, SigtermCheckpoint(tmp_path / "checkpoints"), SigtermAt("end"))
    validated = []
    with pytest.raises(TrainingTerminated) as stopped, exit_on_sigterm(trainer):
        trainer.fit(Tiny(), loader())  # the loops have finished: fit itself completes
        validated.append(trainer.validate(Tiny(), loader(), verbose=False))
    assert validated == [] and stopped.value.code == 143 and stopped.value.checkpoint is None
    assert "training had finished" in str(stopped.value)


SIGTERM_RUN = r"""
import os, signal, sys
from pathlib import Path
import lightning.pytorch as pl
from mmtrain.config.compose import compose_config
from mmtrain.app.commands import train as run
from mmtrain.engine.callbacks.checkpoint_io import AtomicCheckpointIO
from mmtrain.engine.callbacks.signals import SigtermCheckpoint, exit_on_sigterm

class SigtermAt(pl.Callback):
    def on_train_batch_end(self, trainer, *_):
        if trainer.global_step == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGTERM)

built = []
original = run.build_trainer

def build_trainer(*args, **kwargs):  # what app/commands/train.py gets: the plugin and the SIGTERM callback
    trainer = original(*args, **kwargs)
    if not isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO):
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    if not any(isinstance(c, SigtermCheckpoint) for c in trainer.callbacks):
        trainer.callbacks.append(SigtermCheckpoint(Path(trainer.default_root_dir) / "checkpoints"))
    trainer.callbacks.append(SigtermAt())
    built.append(trainer)
    return trainer

run.build_trainer = build_trainer

class Built:  # exit_on_sigterm looks at the trainer only once it stops
    callbacks = property(lambda self: built[-1].callbacks)
    global_step = property(lambda self: built[-1].global_step)

overrides = ["data=synthetic", "data.train.num_samples=48", "data.val.num_samples=8", "data.test.num_samples=8",
             "data.batch_size=8", "trainer.max_epochs=1", "callbacks.progress=null", "logger.tensorboard=null",
             "~model/encoders/video", "model/fusion=concat", "+trainer.enable_model_summary=false",
             "trainer.num_sanity_val_steps=0", f"run_dir={sys.argv[1]}"]
try:
    with exit_on_sigterm(Built()):
        run.train(compose_config(overrides))
except SystemExit as err:  # what cli.main does with TrainingTerminated
    print(f"STOPPED: {err}", flush=True)
    raise
"""


@pytest.mark.slow
def test_sigterm_during_a_real_run_writes_a_checkpoint_and_exits_143(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", SIGTERM_RUN, str(run_dir), "2"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == EXIT_SIGTERM, done.stdout[-2000:] + done.stderr[-3000:]
    ckpt = run_dir / "checkpoints" / "last-step0000002.ckpt"
    assert f"STOPPED: stopped by SIGTERM at step 2: checkpoint written to {ckpt}" in done.stdout
    assert read_manifest(ckpt.parent)["checkpoints"][ckpt.name]["global_step"] == 2
    verify_checkpoint(ckpt)
    saved = AtomicCheckpointIO().load_checkpoint(ckpt)  # weights_only=True: mmtrain's checkpoints load
    assert saved["global_step"] == 2 and saved["mmtrain_config_yaml"] and saved["optimizer_states"]
    assert find_resume_checkpoint(ckpt.parent) == ckpt
    assert not (run_dir / "metrics.json").exists()  # the run did not go on to report success
