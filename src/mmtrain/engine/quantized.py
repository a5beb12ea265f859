"""Checkpoints of models with bitsandbytes-quantized layers (QLoRA): the frozen quantized base stays out.

A QLoRA LM's quantized linear layers (``Linear4bit`` / ``Linear8bitLt``) are frozen and rebuilt exactly
from the pretrained folder whenever the model is built, so a checkpoint need not carry them (it would
be most of its size) and a plain ``load_state_dict`` could not take them back (their state dict holds
bitsandbytes' quantization records, which only a quantized *load* understands). Checkpoints therefore
leave those entries out, and loading accepts their absence, and only theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import nn


def is_quantized_layer(module: nn.Module) -> bool:
    """A bitsandbytes quantized layer (recognised without importing bitsandbytes)."""
    return type(module).__module__.startswith("bitsandbytes") and type(module).__name__.startswith("Linear")


def quantized_base_keys(module: nn.Module, keys: Iterable[str] | None = None) -> set[str]:
    """Those of ``keys`` (state-dict keys of ``module``; default: all of them) that belong to its quantized
    layers and are not trainable; none (and nothing computed) when it has no quantized layer."""
    layers = [name for name, m in module.named_modules() if is_quantized_layer(m)]
    if not layers:
        return set()
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    prefixes = tuple(f"{name}." for name in layers)
    return {key for key in (module.state_dict() if keys is None else keys)
            if key.startswith(prefixes) and key not in trainable}


def without_quantized_base(state: Mapping[str, Any], module: nn.Module) -> dict[str, Any]:
    """``state`` (``module``'s state dict) less the frozen quantized entries (``state`` itself when there
    are none)."""
    dropped = quantized_base_keys(module, state)
    return {key: value for key, value in state.items() if key not in dropped} if dropped else dict(state)


def load_trained_state(module: nn.Module, state: Mapping[str, Any], strict: bool = True,
                       load: Callable[..., Any] | None = None) -> Any:
    """``module.load_state_dict(state, strict)``, where the frozen quantized entries may be absent (a
    checkpoint written by :func:`without_quantized_base`); any other missing or unexpected key is refused
    by name, as a strict load would. ``load``: the loading method to call (default ``module.load_state_dict``;
    an override passes its ``super().load_state_dict``)."""
    load = load or module.load_state_dict
    dropped = quantized_base_keys(module)
    if not dropped:
        return load(state, strict=strict)
    result = load({k: v for k, v in state.items() if k not in dropped}, strict=False)
    missing = [k for k in result.missing_keys if k not in dropped]
    if strict and (missing or result.unexpected_keys):
        raise RuntimeError(f"the checkpoint does not match the model: missing {sorted(missing)[:10]}, unexpected "
                           f"{sorted(result.unexpected_keys)[:10]} (quantized base layers excepted: they come from "
                           "the pretrained LM).")
    return result
