"""Opt-in CPU speed settings (``perf.*``): applied by the ``mmtrain`` command, undone when its run ends.

Importing mmtrain, or training through the Python API (:mod:`mmtrain.app.api`, unless asked with
``perf=True``), changes none of this. The ``mmtrain train`` / ``kfold`` commands apply the settings
the config's ``perf`` section turns on (all three by default):

* ``lightning_fixes``: two fixes to the pinned Lightning's per-step overhead
  (:mod:`mmtrain.engine.lightning_fixes`), swapped in for the run and swapped back after it, on
  the exact Lightning release they were checked against only.
* ``gc_freeze``: :func:`gc.freeze` while forked DataLoader workers live, so a full collection in the
  main process does not copy the pages they share (:mod:`mmtrain.engine.callbacks.gc_freeze`);
  only what it froze is unfrozen.
* ``malloc``: steady glibc ``malloc`` settings, given through ``GLIBC_TUNABLES`` to the command's
  own process (it re-executes itself once with the variable set; nothing is changed in a running
  interpreter). A training step frees and re-allocates the same buffers every time; with glibc's
  adaptive mmap threshold and 128 KiB trim threshold, whether they land in reused memory or in fresh
  pages depends on earlier allocation order: the same loop ran with 4 or 2,400 page faults a step
  (51.6 vs 58.6 ms on the demo). A fixed 32 MiB mmap threshold and up to 1 GiB of kept heap make
  every step reuse the previous one's memory. Cost: memory freed after a peak stays with the
  process. Set the same variable yourself to get it elsewhere (see :func:`malloc_tunables`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

#: glibc malloc tunables (``GLIBC_TUNABLES``) of ``perf.malloc``.
MALLOC_TUNABLES = {
    "glibc.malloc.mmap_threshold": 32 * 2**20,  # glibc's own ceiling for its adaptive threshold on 64-bit
    "glibc.malloc.trim_threshold": 2**30,
    "glibc.malloc.top_pad": 64 * 2**20,
}
#: Set in the re-executed process so it does not re-execute again.
REEXEC_MARK = "MMTRAIN_PERF_REEXEC"


@dataclasses.dataclass(frozen=True)
class PerfSettings:
    """Which speed settings a run applies; all off unless turned on."""

    lightning_fixes: bool = False
    gc_freeze: bool = False
    malloc: bool = False

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> PerfSettings:
        """From a config's ``perf`` section (missing: all off); an unknown key is named."""
        values = dict(node or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"perf: unknown setting(s) {unknown}; known: {sorted(known)}.")
        return cls(**{k: bool(v) for k, v in values.items()})

    def callbacks(self) -> list[Any]:
        """The Lightning callbacks these settings add to every trainer of the run (new ones per call)."""
        if not self.gc_freeze:
            return []
        from mmtrain.engine.callbacks.gc_freeze import FreezeBeforeFork

        return [FreezeBeforeFork()]

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Runs a block with the in-process settings (``lightning_fixes``) in place, restored after."""
        if not self.lightning_fixes:
            yield
            return
        from mmtrain.engine.lightning_fixes import lightning_fixes_applied

        with lightning_fixes_applied():
            yield


def malloc_tunables(current: str = "") -> str:
    """``GLIBC_TUNABLES`` with :data:`MALLOC_TUNABLES` added to ``current`` (settings already in it win)."""
    items = [item for item in current.split(":") if item]
    present = {item.split("=", 1)[0] for item in items}
    return ":".join(items + [f"{name}={value}" for name, value in MALLOC_TUNABLES.items() if name not in present])


def needs_malloc_reexec(environ: Mapping[str, str]) -> bool:
    """Whether this process should re-execute itself to get :data:`MALLOC_TUNABLES` (Linux with glibc,
    not already re-executed, and some tunable not set)."""
    if environ.get(REEXEC_MARK) or not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    current = environ.get("GLIBC_TUNABLES", "")
    return malloc_tunables(current) != current


def reexec_with_malloc_tunables(argv: Sequence[str], program: Sequence[str] | None = None) -> None:
    """Replace this process by ``<program> <argv>`` (default ``python -m mmtrain``) with the malloc
    tunables set (same pid, same signal handling); returns only when nothing needs doing."""
    if not needs_malloc_reexec(os.environ):
        return
    env = dict(os.environ, GLIBC_TUNABLES=malloc_tunables(os.environ.get("GLIBC_TUNABLES", "")))
    env[REEXEC_MARK] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    command = list(program or [sys.executable, "-m", "mmtrain"])
    os.execve(command[0], [*command, *argv], env)
