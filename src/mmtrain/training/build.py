"""Build data, model, task, callbacks and loggers from a validated config."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from omegaconf import DictConfig

from mmtrain.config.targets import safe_instantiate
from mmtrain.hf.modeling import MultimodalModel
from mmtrain.hf.processing import MultimodalProcessor


def build_processor(cfg: DictConfig, prefixes: Sequence[str]) -> MultimodalProcessor:
    """The processor alone (``data.processor``), e.g. for export without the datasets."""
    return safe_instantiate(cfg.data.processor, prefixes, config_key="data.processor")


def build_model(cfg: DictConfig, label_names: Sequence[str], prefixes: Sequence[str]) -> MultimodalModel:
    """The model from ``cfg.model`` with the class count from ``label_names``."""
    return safe_instantiate(
        cfg.model, prefixes, id2label=dict(enumerate(label_names)), allowed_target_prefixes=list(prefixes)
    )


def wire_processor(processor: MultimodalProcessor, model: MultimodalModel) -> None:
    """Make the processor emit what the model's encoders take (waveform vs log-mel audio)."""
    accepted = model.expected_inputs()
    if "input_values" in accepted and "input_features" not in accepted:
        processor.audio_format = "waveform"
    elif "input_features" in accepted:
        processor.audio_format = "log_mel"


def build_callbacks(cfg: DictConfig, prefixes: Sequence[str]) -> list[pl.Callback]:
    """Every non-null entry of ``cfg.callbacks``."""
    nodes = (cfg.get("callbacks") or {}).items()
    return [safe_instantiate(n, prefixes, config_key=f"callbacks.{k}") for k, n in nodes if n is not None]


def build_loggers(cfg: DictConfig, prefixes: Sequence[str]) -> list[Any]:
    """Every non-null entry of ``cfg.logger``."""
    nodes = (cfg.get("logger") or {}).items()
    return [safe_instantiate(n, prefixes, config_key=f"logger.{k}") for k, n in nodes if n is not None]
