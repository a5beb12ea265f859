"""Write and read export folders (model + processor + training config).

A model with LoRA (``model.lora``, see :mod:`mmtrain.components.lm.lora`) is exported twice: merged into
``folder`` (a plain model, ``lora: null``) and adapter-only into ``folder/adapter`` (the peft
adapter plus the weights outside the LM; only when the LM came from a pretrained folder). Each
gets the processor and the training config, so either can be evaluated or served.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from mmtrain.models.processing import MultimodalProcessor
from mmtrain.core.integrity import update_manifest, verify_folder

TRAINING_CONFIG = "training_config.yaml"


def write_export(model: nn.Module, processor: MultimodalProcessor, folder: Path, *, config_yaml: str) -> Path:
    """``save_pretrained`` the model and processor into ``folder`` with the training config beside them.

    With LoRA, ``folder`` holds the merged model and ``folder/adapter`` the adapter-only export.
    """
    folder.mkdir(parents=True, exist_ok=True)
    folders = [folder]
    if getattr(getattr(model, "config", None), "lora", None):
        from mmtrain.components.lm.lora import write_lora_exports

        adapter = write_lora_exports(model, folder)
        folders += [adapter] if adapter is not None else []
    else:
        model.save_pretrained(folder)
    for target in reversed(folders):  # adapter/ first: its own manifest keeps it out of the export's
        processor.save_pretrained(target)
        (target / TRAINING_CONFIG).write_text(config_yaml)
        update_manifest(target)  # every file, with its sha256 (signed with MMTRAIN_SIGNING_KEY)
    return folder


def find_export(path: str | Path, *, verify: bool = True) -> Path:
    """The export folder of ``path``: the folder itself, or ``<run dir>/export``; with ``verify``, every
    file its ``manifest.json`` lists is checked first (:mod:`mmtrain.core.integrity`)."""
    folder = Path(path)
    if (folder / "export" / "config.json").is_file():
        folder = folder / "export"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} is neither an export folder (config.json + model.safetensors) nor a run directory "
            "with export/; train first, or run `mmtrain export <checkpoint>`."
        )
    if verify:
        verify_folder(folder)
    return folder
