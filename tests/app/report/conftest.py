"""Two tiny real runs shared by the report tests: a demo classifier and a contrastive alignment.

Each is trained once per session (seconds on the tiny demo set) in its own temporary folder; the
report tests read the files those runs wrote, never hand-made copies.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mmtrain.config.compose import compose_config
from mmtrain.app.commands.train import train


def _train(folder: Path, overrides: list[str]) -> Path:
    before, threads = Path.cwd(), torch.get_num_threads()
    os.chdir(folder)  # the demo set is built under ./data
    torch.set_num_threads(1)
    try:
        train(compose_config([*overrides, "data.prepare.size=tiny", "callbacks.progress=null",
                              f"run_dir={folder / 'run'}"]))
    finally:
        os.chdir(before)
        torch.set_num_threads(threads)
    return folder / "run"


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``experiment=demo``, 3 epochs of batch 4: metrics, curves, confusion matrix, gradient audit."""
    yield _train(tmp_path_factory.mktemp("demo"), ["experiment=demo", "data.batch_size=4", "trainer.max_epochs=3"])


@pytest.fixture(scope="session")
def align_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``experiment=align_image_text``, 2 epochs: Recall@K and the retrieval examples."""
    yield _train(tmp_path_factory.mktemp("align"),
                 ["experiment=align_image_text", "data.batch_size=8", "trainer.max_epochs=2"])
