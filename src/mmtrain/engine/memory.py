"""Memory levers of a built model: gradient checkpointing and the attention implementation.

``model.gradient_checkpointing: true`` recomputes activations in the backward pass instead of keeping
them, for every Hugging Face model inside (encoder towers, the LM: transformers' own
``activation_checkpointing_enable``, non-reentrant) and every transformer block of mmtrain's own
(fusion, Perceiver, temporal video transformer, the TRM decoder: ``GradientCheckpointingLayer``s). Only
training steps recompute; evaluation runs as before.

``model.attn_implementation: eager | sdpa | flash_attention_2 | ...`` is set on every Hugging Face model
inside with transformers' ``set_attn_implementation`` (which checks that the kernel is installed and the
model supports it). mmtrain's own blocks use PyTorch's ``scaled_dot_product_attention`` either way.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from torch import nn
from torch.utils.checkpoint import checkpoint

log = logging.getLogger(__name__)


def hf_models(model: nn.Module) -> list[tuple[str, Any]]:
    """The outermost Hugging Face ``PreTrainedModel``s inside ``model`` (not ``model`` itself): the
    towers' models and the LM, as ``(path, module)``."""
    from transformers import PreTrainedModel

    found: list[tuple[str, Any]] = []
    for name, module in model.named_modules():
        if module is model or not isinstance(module, PreTrainedModel):
            continue
        if not any(name.startswith(f"{outer}.") for outer, _ in found):
            found.append((name, module))
    return found


def enable_gradient_checkpointing(model: nn.Module) -> dict[str, int]:
    """Turn on gradient checkpointing in every Hugging Face model and mmtrain block inside ``model``;
    returns how many layers of each kind now recompute.

    Raises:
        ValueError: a Hugging Face model inside does not support it (named, with its path).
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    inside: set[int] = set()
    for name, module in hf_models(model):
        if not module.supports_gradient_checkpointing:
            raise ValueError(f"model.gradient_checkpointing: {type(module).__name__} (at {name}) does not support "
                             "gradient checkpointing; set model.gradient_checkpointing=false.")
        kwargs = {"use_reentrant": False}
        if hasattr(module, "activation_checkpointing_enable"):  # transformers >= 5.23
            module.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        inside.update(id(m) for m in module.modules())
    recompute = functools.partial(checkpoint, use_reentrant=False)
    counts = {"hugging_face_layers": 0, "mmtrain_blocks": 0}
    for module in model.modules():
        if not isinstance(module, GradientCheckpointingLayer):
            continue
        if id(module) in inside:
            counts["hugging_face_layers"] += bool(module.gradient_checkpointing)
        else:
            module._gradient_checkpointing_func = recompute
            module.gradient_checkpointing = True
            counts["mmtrain_blocks"] += 1
    return counts


def set_attn_implementation(model: nn.Module, implementation: str) -> list[str]:
    """Set ``implementation`` on every Hugging Face model inside ``model``; returns their paths.

    Raises:
        ValueError: the implementation is unknown, not installed or not supported by a model (named).
    """
    paths = []
    for name, module in hf_models(model):
        try:
            module.set_attn_implementation(implementation)
        except (ValueError, ImportError) as err:
            raise ValueError(f"model.attn_implementation={implementation}: {type(module).__name__} (at {name}) "
                             f"cannot use it: {err}") from err
        paths.append(name)
    return paths


def apply_memory_levers(model: nn.Module, *, gradient_checkpointing: bool = False,
                        attn_implementation: str | None = None) -> None:
    """Apply ``model.gradient_checkpointing`` / ``model.attn_implementation`` to a built model (logged)."""
    if attn_implementation:
        paths = set_attn_implementation(model, str(attn_implementation))
        log.info("model.attn_implementation=%s on %s", attn_implementation, ", ".join(paths) or "no Hugging Face model")
    if gradient_checkpointing:
        counts = enable_gradient_checkpointing(model)
        log.info("model.gradient_checkpointing: %d Hugging Face layers and %d mmtrain blocks recompute in the "
                 "backward pass", counts["hugging_face_layers"], counts["mmtrain_blocks"])
