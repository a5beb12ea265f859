"""Write and read export folders (model + processor + training config)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from mmtrain.hf.processing import MultimodalProcessor

TRAINING_CONFIG = "training_config.yaml"


def write_export(model: nn.Module, processor: MultimodalProcessor, folder: Path, *, config_yaml: str) -> Path:
    """``save_pretrained`` the model and processor into ``folder`` with the training config beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / TRAINING_CONFIG).write_text(config_yaml)
    return folder
