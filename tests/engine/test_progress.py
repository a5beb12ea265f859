"""Each test bar of a run names what it scores (the fused model, then one modality at a time)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from mmtrain.engine.callbacks.progress import RunProgressBar


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.only_modality: str | None = None

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.layer(batch)


class Seen(pl.Callback):
    def __init__(self) -> None:
        self.descriptions: list[str] = []

    def on_test_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.descriptions.append(trainer.progress_bar_callback.test_description)


def test_the_test_bar_names_the_modality_tested() -> None:
    seen, module = Seen(), Tiny()
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_model_summary=False,
                         callbacks=[RunProgressBar(), seen])
    data = DataLoader(torch.randn(4, 2), batch_size=2)
    for only in (None, "audio", "text"):
        module.only_modality = only
        trainer.test(module, dataloaders=data, verbose=False)
    assert seen.descriptions == ["Testing", "Testing (audio only)", "Testing (text only)"]
