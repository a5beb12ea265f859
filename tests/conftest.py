"""Shared fixtures: a marker module whose import would leave a file behind; one intra-op thread."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

MARKER_MODULE = """
from pathlib import Path
Path({marker!r}).write_text("imported")
class Thing:
    def __init__(self, **kwargs):
        pass
"""


@pytest.fixture
def marker_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """An importable module ``mm_marker_<n>`` that writes ``marker`` when imported."""
    name = f"mm_marker_{abs(hash(str(tmp_path))) % 10**8}"
    marker = tmp_path / "IMPORTED"
    (tmp_path / f"{name}.py").write_text(MARKER_MODULE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, marker
    sys.modules.pop(name, None)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add overhead (20x slower on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
