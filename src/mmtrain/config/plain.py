"""Plain Python containers from config values (OmegaConf nodes or nested mappings/sequences)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf


def plain(value: Any) -> Any:
    """Resolve OmegaConf nodes and copy nested mappings / lists / tuples into dicts and lists."""
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
