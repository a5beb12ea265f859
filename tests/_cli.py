"""Run the ``mmtrain`` command in a fresh process, as a user does (offline)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_mmtrain(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """``mmtrain <args>`` in ``cwd``; output captured as text."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "mmtrain", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=timeout)
