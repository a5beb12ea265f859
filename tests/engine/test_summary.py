"""The model summary drops Lightning's FLOPs column when nothing was counted and keeps it otherwise."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from rich.console import Console
from torch.utils.data import DataLoader

from mmtrain.engine.callbacks.summary import RunModelSummary


class Tiny(pl.LightningModule):
    def __init__(self, example: bool) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 3)
        self.example_input_array = torch.randn(2, 4) if example else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self(batch).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def summary_text(example: bool, monkeypatch: pytest.MonkeyPatch) -> str:
    console = Console(width=200, record=True, force_terminal=False)
    monkeypatch.setattr("rich.get_console", lambda: console)  # rich's console, read back
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, max_steps=1, callbacks=[RunModelSummary()])
    trainer.fit(Tiny(example), DataLoader(torch.randn(4, 4), batch_size=2))
    return console.export_text()


def test_no_flops_column_when_none_were_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    text = summary_text(False, monkeypatch)
    assert "layer" in text and "Linear" in text and "Total params: 15" in text
    assert "FLOPs" not in text


def test_flops_kept_when_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    text = summary_text(True, monkeypatch)
    assert "FLOPs" in text and "Total FLOPs: 48" in text
