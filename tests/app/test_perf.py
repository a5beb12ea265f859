"""The opt-in ``perf`` settings: a config section with named keys; ``perf.malloc`` reaches the
``mmtrain`` process as ``GLIBC_TUNABLES`` (one re-execution, same pid) and never a caller's own
interpreter; the settings apply only to the run they wrap."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmtrain.app.commands.train import prepare
from mmtrain.app.perf import MALLOC_TUNABLES, REEXEC_MARK, PerfSettings, malloc_tunables, needs_malloc_reexec
from mmtrain.config.compose import compose_config


def test_perf_is_a_config_section_read_by_name() -> None:
    cfg, _ = prepare(compose_config(["experiment=demo", "perf.gc_freeze=false"]))
    assert PerfSettings.from_config(cfg.perf) == PerfSettings(lightning_fixes=True, gc_freeze=False, malloc=True)
    assert PerfSettings.from_config(None) == PerfSettings()  # nothing applied unless asked
    with pytest.raises(ValueError, match=r"perf: unknown setting\(s\) \['malloc_tuning'\]"):
        PerfSettings.from_config({"malloc_tuning": True})


def test_tunables_are_added_and_the_users_own_win() -> None:
    mine = "glibc.malloc.trim_threshold=4096:glibc.malloc.arena_max=2"
    merged = dict(item.split("=") for item in malloc_tunables(mine).split(":"))
    assert merged["glibc.malloc.trim_threshold"] == "4096" and merged["glibc.malloc.arena_max"] == "2"
    assert merged["glibc.malloc.mmap_threshold"] == str(MALLOC_TUNABLES["glibc.malloc.mmap_threshold"])
    assert malloc_tunables(malloc_tunables("")) == malloc_tunables("")
    assert not needs_malloc_reexec({"GLIBC_TUNABLES": malloc_tunables("")})
    assert not needs_malloc_reexec({REEXEC_MARK: "1"})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="GLIBC_TUNABLES is glibc's")
@pytest.mark.parametrize("malloc", [True, False])
def test_the_command_reexecutes_itself_with_the_tunables(tmp_path: Path, malloc: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", REEXEC_MARK)}
    done = subprocess.run(
        [sys.executable, "-m", "mmtrain", "train", "data=synthetic", "data.train.num_samples=8",
         "data.val.num_samples=4", "data.test.num_samples=4", "data.batch_size=4", "trainer.max_epochs=1",
         "callbacks.progress=null", "logger.tensorboard=null", "evaluate_unimodal=false",
         f"perf.malloc={str(malloc).lower()}", f"run_dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "metrics.json").is_file()  # the re-executed process finished the run
    line = "perf.malloc: GLIBC_TUNABLES=" + malloc_tunables("")
    assert ("".join(line.split()) in "".join(done.stdout.split())) is malloc, done.stdout[-2000:]  # rich wraps long lines
    assert "GLIBC_TUNABLES" not in os.environ  # never the caller's own interpreter
