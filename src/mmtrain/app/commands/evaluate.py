"""``mmtrain eval`` and ``mmtrain export``: work from a run directory, export folder or checkpoint."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from omegaconf import DictConfig, OmegaConf

from mmtrain.config.compose import ConfigError
from mmtrain.config.instantiate import safe_instantiate, stored_config
from mmtrain.config.targets import DEFAULT_ALLOWED_PREFIXES, narrow_prefixes, runtime_prefixes
from mmtrain.config.validate import validate_config
from mmtrain.engine.build import build_data, build_model, build_task, wire_processor
from mmtrain.engine.callbacks.export import CONFIG_KEY, LABELS_KEY
from mmtrain.engine.export import TRAINING_CONFIG, find_export, write_export
from mmtrain.engine.quantized import load_trained_state

log = logging.getLogger(__name__)


def read_stored_config(
    text: str, source: str, overrides: list[str] | None = None, sections: tuple[str, ...] = ("data", "model")
) -> tuple[DictConfig, tuple[str, ...]]:
    """A config read back from an artifact, and the prefixes it may use.

    The artifact's own allowlist can only narrow what the user running this process allows, and
    its config may hold no interpolation (refused by name): it was written resolved.
    """
    cfg = stored_config(text, source)
    if overrides:
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
        except Exception as err:
            raise ConfigError(f"bad override {overrides}: {err}") from err
    stored = [*DEFAULT_ALLOWED_PREFIXES, *(cfg.get("allowed_target_prefixes") or [])]
    prefixes = narrow_prefixes(runtime_prefixes(), stored)
    try:
        validate_config(cfg, prefixes, sections)
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from err
    return cfg, prefixes


def read_training_config(folder: Path, overrides: list[str] | None, sections: tuple[str, ...],
                         what: str) -> tuple[DictConfig, tuple[str, ...]]:
    """The training config an export folder keeps (checked ``sections``); ``what``: what the caller needs
    it for, named when the file is missing."""
    config_file = folder / TRAINING_CONFIG
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} is missing: it names {what}.")
    return read_stored_config(config_file.read_text(), str(config_file), overrides, sections)


def evaluate(path: str | Path, *, split: str = "test", overrides: list[str] | None = None) -> dict[str, Any]:
    """Score an exported model on a split of the data its training config names, with its task
    (classification, contrastive, pairwise...) rebuilt from that config."""
    from transformers import AutoModel

    import mmtrain.models  # noqa: F401

    if split not in ("val", "test"):
        raise ValueError("--split must be val or test")
    folder = find_export(path)
    cfg, prefixes = read_training_config(folder, overrides, ("data", "model", "task"), "the data to evaluate on")
    model = AutoModel.from_pretrained(str(folder))
    log.info("evaluating %s on the %s split of the data its training config names (data_root: %s)",
             folder, split, cfg.get("data_root"))
    datamodule = build_data(cfg, prefixes)
    labels = [model.config.id2label[i] for i in sorted(model.config.id2label)] if datamodule.label_names else []
    if datamodule.label_names != labels:
        raise ValueError(f"the data's labels {datamodule.label_names} differ from the model's {labels}.")
    wire_processor(datamodule.processor, model)
    task = build_task(cfg, prefixes, model, labels, datamodule.processor)
    import sys

    # a progress bar where someone watches (a terminal); none in logs and pipes
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=sys.stderr.isatty(),
                         enable_checkpointing=False, enable_model_summary=False)
    loop = trainer.validate if split == "val" else trainer.test
    loop(task, datamodule=datamodule, verbose=False)
    metrics = {"export": str(folder), split: task.results[split]}
    (folder / f"eval_{split}.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def export_checkpoint(checkpoint: str | Path, out: str | Path | None = None) -> Path:
    """Rebuild the model from the config inside a checkpoint, load its weights, ``save_pretrained``."""
    from mmtrain.engine.callbacks.checkpoint_io import load_verified

    file = Path(checkpoint)
    if not file.exists():  # a file, or a sharded checkpoint's folder (consolidated here)
        raise FileNotFoundError(f"checkpoint {file} does not exist")
    state = load_verified(file)  # manifest size + sha256 + step, then weights-only: named errors
    if not isinstance(state, dict) or CONFIG_KEY not in state:
        raise ValueError(f"{file} has no embedded mmtrain config; was it written by `mmtrain train`?")
    cfg, prefixes = read_stored_config(state[CONFIG_KEY], str(file))
    processor = safe_instantiate(cfg.data.processor, prefixes, config_key="data.processor")
    model = build_model(cfg, state[LABELS_KEY], prefixes, warm_start=False, facts=processor.model_facts())
    weights = {k[len("model."):]: v for k, v in state["state_dict"].items() if k.startswith("model.")}
    load_trained_state(model, weights)  # a QLoRA checkpoint holds no frozen quantized layers
    wire_processor(processor, model)
    target = Path(out) if out else file.parent.parent / f"export-{file.stem}"
    return write_export(model, processor, target, config_yaml=state[CONFIG_KEY])
