"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for mmtrain models under Lightning's ``ModelParallelStrategy``.

Each transformer block is its own FSDP unit (its parameters are gathered just before it runs and freed
after), then each component the model names (``shard_units``: encoder slots, fusion, head, projector...) and
finally the whole model: parameters are split over the data-parallel ranks. An LM's embedding table and head
(tied in many LMs, read outside the LM's forward) stay in the root unit, gathered for the model's whole forward;
generation and scoring (``sharded_entry_points``) are registered as forwards of the model
(``register_fsdp_forward_method``), and generation stops only when every rank is done, since every step gathers.
Which classes are blocks is derived, not typed: every Hugging Face model inside names its own
(``_no_split_modules``), mmtrain's own models name theirs the same way, and torch's ``TransformerEncoderLayer``
(mmtrain's fusion / temporal blocks) is one.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

TORCH_BLOCKS = frozenset({"TransformerEncoderLayer", "TransformerDecoderLayer"})
#: bitsandbytes' parameter classes (QLoRA): FSDP2 cannot split them.
QUANTIZED_PARAMS = frozenset({"Params4bit", "Int8Params"})


def local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor without any collective: the local shard of an FSDP2 ``DTensor``, else the
    tensor itself (what code running on one rank alone, such as the gradient audit, may read)."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def is_sharded(module: nn.Module) -> bool:
    """Whether ``module``'s parameters are FSDP2 shards (``DTensor``)."""
    return any(local_shard(p) is not p for p in module.parameters())


def load_full_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full (unsharded) state dict into an FSDP2-sharded ``module``: every rank cuts its own shard of each
    tensor (``distribute_tensor`` without communication; every rank holds ``state``). Unlike torch's
    ``set_model_state_dict``, tied parameters stored under two keys (an LM's embedding and head, peft's
    trainable-token deltas) are fine: each key is cut for the parameter it names."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    reshard_root(module)  # the registered parameters are the shards again
    current = module.state_dict()
    ready = {}
    for key, value in state.items():
        target = current.get(key)
        if isinstance(target, DTensor):
            value = distribute_tensor(value.to(device=target.device, dtype=target.dtype), target.device_mesh,
                                      target.placements, src_data_rank=None)
        ready[key] = value
    module.load_state_dict(ready)


def reshard_root(model: nn.Module) -> None:
    """Free the gathered parameters of an FSDP2 root unit (kept after a forward without backward); else nothing."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model.reshard()


def block_class_names(model: nn.Module) -> set[str]:
    """Class names of the blocks the models inside ``model`` declare (``_no_split_modules``), plus torch's layers."""
    names = set(TORCH_BLOCKS)
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return names


def fsdp2_precision_policy(precision: str) -> Any:
    """FSDP2's mixed precision for ``trainer.precision``: under ``bf16-mixed`` the shards are gathered and computed in
    bfloat16 (half the all-gather traffic and unsharded memory) while gradients are reduced and the sharded master
    weights kept in float32; ``None`` (FSDP2's default: as stored) otherwise."""
    if precision != "bf16-mixed":
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def block_wrap_policy(model: nn.Module) -> Any:
    """FSDP v1's auto-wrap policy for ``model``: every block class its models declare is its own FSDP unit
    (:func:`block_class_names`; what ``fully_shard`` gets per block under FSDP2)."""
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    names = block_class_names(model)
    return ModuleWrapPolicy({type(m) for m in model.modules() if type(m).__name__ in names and m is not model})


def shard_model(model: nn.Module, mesh: Any, *, mixed_precision: Any = None) -> dict[str, int]:
    """``fully_shard`` blocks, then components, then ``model`` (bottom up, as FSDP2 needs); returns the counts."""
    quantized = sorted({type(p).__name__ for p in model.parameters()} & QUANTIZED_PARAMS)
    if quantized:
        raise ValueError(
            f"trainer=fsdp2 does not shard bitsandbytes-quantized weights ({', '.join(quantized)}: QLoRA, "
            "model.lora.quantize): train QLoRA with trainer=ddp (one process per GPU holds the 4-bit LM), or "
            "shard the unquantized LM with LoRA (model.lora.quantize=null).")
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    options = {"mesh": mesh, **({"mp_policy": mixed_precision} if mixed_precision is not None else {})}
    names = block_class_names(model)
    blocks = [m for m in model.modules() if type(m).__name__ in names and m is not model]
    kinds = ", ".join(sorted({type(b).__name__ for b in blocks})) or "none"
    for block in reversed(blocks):  # innermost first
        fully_shard(block, **options)
    components = list(getattr(model, "shard_units", lambda: {})().values())
    units = [m for m in _callable_units(components)
             if m not in blocks and any(p.numel() for p in m.parameters()) and not _is_hf_model(m)]
    for unit in units:
        fully_shard(unit, **options)
    fully_shard(model, **options)
    for method in getattr(model, "sharded_entry_points", ()):  # generation, scoring: gathered like a forward
        register_fsdp_forward_method(model, method)
    counts = {"blocks": len(blocks), "components": len(units)}
    log.info("FSDP2: %d blocks (%s) and %d components sharded over %s ranks", counts["blocks"], kinds,
             counts["components"], mesh.size())
    return counts


def _is_hf_model(module: nn.Module) -> bool:
    """A transformers model (a VLM's vision tower...): ``fully_shard`` renames its class, and transformers finds what a
    model records (hidden states...) by class name, so such a model stays whole; its blocks are still units."""
    from transformers import PreTrainedModel

    return isinstance(module, PreTrainedModel)


def plain_class(module: nn.Module) -> type:
    """``module``'s own class: ``fully_shard`` swaps it for a subclass ``FSDP<name>``."""
    from torch.distributed.fsdp import FSDPModule

    cls = type(module)
    return next(c for c in cls.__mro__ if not issubclass(c, FSDPModule)) if issubclass(cls, FSDPModule) else cls


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
