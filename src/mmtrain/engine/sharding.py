"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for mmtrain models under Lightning's ``ModelParallelStrategy``.

Models with an LM decoder (``model=llm``, ``model=vlm``) are refused for now: they read the decoder's embedding
table and LM head, and generate, outside the module's forward, where FSDP2 gathers nothing.

Each transformer block is its own FSDP unit (its parameters are gathered just before it runs and freed
after), then each component (encoder slot, fusion, head, projector, decoder...) and finally the whole
model: parameters are split over the data-parallel ranks. Which classes are blocks is derived, not
typed: every Hugging Face model inside names its own (``_no_split_modules``), mmtrain's own models name
theirs the same way, and torch's ``TransformerEncoderLayer`` (mmtrain's fusion / temporal blocks) is one.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

TORCH_BLOCKS = frozenset({"TransformerEncoderLayer", "TransformerDecoderLayer"})


def local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor without any collective: the local shard of an FSDP2 ``DTensor``, else the
    tensor itself (what code running on one rank alone, such as the gradient audit, may read)."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def block_class_names(model: nn.Module) -> set[str]:
    """Class names of the blocks the models inside ``model`` declare (``_no_split_modules``), plus torch's layers."""
    names = set(TORCH_BLOCKS)
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return names


def shard_model(model: nn.Module, mesh: Any, *, mixed_precision: Any = None) -> dict[str, int]:
    """``fully_shard`` blocks, then components, then ``model`` (bottom up, as FSDP2 needs); returns the counts."""
    if hasattr(model, "generate_answers"):
        raise ValueError(
            f"trainer=fsdp2 does not shard a {type(model).__name__} yet: an LM decoder's embedding table, LM head and "
            "generation run outside the module's forward, where FSDP2 does not gather their shards. Train LLM and VLM "
            "models with trainer=ddp_cpu (CPU) or trainer=ddp (GPUs), or with LoRA/QLoRA to fit the memory.")
    from torch.distributed.fsdp import fully_shard

    options = {"mesh": mesh, **({"mp_policy": mixed_precision} if mixed_precision is not None else {})}
    names = block_class_names(model)
    blocks = [m for m in model.modules() if type(m).__name__ in names and m is not model]
    for block in reversed(blocks):  # innermost first
        fully_shard(block, **options)
    components = list(getattr(model, "components", lambda: {})().values())
    units = [m for m in _callable_units(components) if m not in blocks and any(p.numel() for p in m.parameters())]
    for unit in units:
        fully_shard(unit, **options)
    fully_shard(model, **options)
    counts = {"blocks": len(blocks), "components": len(units)}
    log.info("FSDP2: %d blocks (%s) and %d components sharded over %s ranks", counts["blocks"],
             ", ".join(sorted({type(b).__name__ for b in blocks})) or "none", counts["components"], mesh.size())
    return counts


def _callable_units(modules: list[nn.Module]) -> list[nn.Module]:
    """``modules`` with every container without a forward (``ModuleDict`` of per-slot projectors...) replaced by
    its children: ``fully_shard`` wraps modules that run."""
    out: list[nn.Module] = []
    for module in modules:
        if isinstance(module, (nn.ModuleDict, nn.ModuleList)):
            out += _callable_units(list(module.children()))
        else:
            out.append(module)
    return out
