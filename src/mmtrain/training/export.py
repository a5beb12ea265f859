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


def find_export(path: str | Path) -> Path:
    """The export folder of ``path``: the folder itself, or ``<run dir>/export``."""
    folder = Path(path)
    if (folder / "export" / "config.json").is_file():
        folder = folder / "export"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} is neither an export folder (config.json + model.safetensors) nor a run directory "
            "with export/; train first, or run `mmtrain export <checkpoint>`."
        )
    return folder
