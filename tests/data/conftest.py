"""Fixtures for the data-format tests: real media written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from ._media import write_mp4


@pytest.fixture(scope="session")
def clip_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 s, 10 fps H.264 mp4 (frame i has grey value 20 + 9 i) with a 440 Hz AAC mono track."""
    return write_mp4(tmp_path_factory.mktemp("media") / "clip.mp4")


@pytest.fixture(scope="session")
def silent_clip_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same video without an audio stream."""
    return write_mp4(tmp_path_factory.mktemp("media") / "silent.mp4", audio=False)
