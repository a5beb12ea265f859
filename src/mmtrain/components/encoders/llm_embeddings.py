"""An LLM's input token embedding table (only that table) as an mmtrain text encoder."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmtrain.components.encoders.base import EncoderOutput, masked_mean
from mmtrain.components.encoders.hf_text import check_token_ids
from mmtrain.components.encoders.hf_tower import build_hf_config, resolve_pretrained_path

LLM_MODEL_TYPES = ("llama", "qwen2", "gpt2")
_EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight")


def find_embedding_key(keys: list[str]) -> str:
    """The checkpoint key of the input embedding table (ends in ``embed_tokens.weight`` / ``wte.weight``)."""
    matches = sorted(k for k in keys if k.endswith(_EMBEDDING_SUFFIXES))
    if len(matches) != 1:
        raise KeyError(f"expected one key ending in {_EMBEDDING_SUFFIXES}, found {matches or 'none'}")
    return matches[0]


def load_embedding_weight(folder: Path) -> torch.Tensor:
    """Read only the input embedding matrix ``[V, H]`` from a ``save_pretrained`` folder.

    Handles a single ``model.safetensors`` and sharded checkpoints
    (``model.safetensors.index.json``); opens only the shard holding the table.
    """
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        key = find_embedding_key(list(weight_map))
        shard = folder / weight_map[key]
    else:
        shard = folder / "model.safetensors"
        if not shard.is_file():
            raise FileNotFoundError(f"no model.safetensors (or its index) in {folder}")
        with safe_open(str(shard), framework="pt") as handle:
            key = find_embedding_key(list(handle.keys()))
    with safe_open(str(shard), framework="pt") as handle:
        return handle.get_tensor(key)


class LLMEmbeddingEncoder(nn.Module):
    """Token embeddings of a decoder LLM (Llama / Qwen2 / GPT-2 families), without the LM itself.

    Only the ``vocab_size x hidden_size`` input embedding table is built (from the HF config), and
    with ``pretrained_path`` only that table is read from the checkpoint. Each token is embedded
    independently (no positions, no context), so padding never affects real tokens. ``pooled`` is
    the masked mean over ``attention_mask``.

    Args:
        model_type: ``"llama"``, ``"qwen2"`` or ``"gpt2"``.
        config: HF config kwargs or a full ``to_dict()`` output (only ``vocab_size`` and
            ``hidden_size`` / ``n_embd`` matter).
        pretrained_path: local ``save_pretrained`` folder of the LLM (or ``"pkg:..."``).
        output_dim: if set, a linear projection of tokens and pooled vector to this width.

    Attributes:
        embed_tokens: ``nn.Embedding(V, H)``.
        output_dim: ``D`` (``output_dim`` if given, else ``H``).
    """

    def __init__(
        self,
        *,
        model_type: str,
        config: Mapping[str, Any] | None = None,
        pretrained_path: str | None = None,
        output_dim: int | None = None,
    ) -> None:
        super().__init__()
        if model_type not in LLM_MODEL_TYPES:
            raise ValueError(
                f"LLMEmbeddingEncoder: unsupported model_type {model_type!r}; use one of {list(LLM_MODEL_TYPES)}"
            )
        folder = resolve_pretrained_path(pretrained_path)
        self.hf_config = build_hf_config(model_type, config, folder)
        self.model_type = model_type
        self.vocab_size = int(self.hf_config.vocab_size)
        hidden = int(self.hf_config.hidden_size)
        self.embed_tokens = nn.Embedding(self.vocab_size, hidden)
        nn.init.normal_(self.embed_tokens.weight, std=float(getattr(self.hf_config, "initializer_range", 0.02)))
        if folder is not None:
            weight = load_embedding_weight(folder)
            if tuple(weight.shape) != (self.vocab_size, hidden):
                raise ValueError(
                    f"embedding table in {folder} has shape {tuple(weight.shape)}, config says "
                    f"({self.vocab_size}, {hidden})"
                )
            with torch.no_grad():
                self.embed_tokens.weight.copy_(weight.to(self.embed_tokens.weight.dtype))
        self.proj: nn.Module = nn.Linear(hidden, output_dim) if output_dim else nn.Identity()
        self.output_dim = int(output_dim) if output_dim else hidden

    def config_dict(self) -> dict[str, Any]:
        """Full ``to_dict()`` of the LLM's HF config; pass it as ``config=`` to rebuild offline."""
        return self.hf_config.to_dict()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> EncoderOutput:
        """Embed token ids.

        Args:
            input_ids: ``[B, L]`` long.
            attention_mask: ``[B, L]`` (1 / True = real token); ``None`` = all real.

        Returns:
            ``EncoderOutput`` with tokens ``[B, L, D]`` (zero at padding), mask ``[B, L]``,
            pooled ``[B, D]``.
        """
        check_token_ids(input_ids, self.vocab_size, f"LLMEmbeddingEncoder({self.model_type})")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        mask = attention_mask.to(device=input_ids.device).bool()
        tokens = self.proj(self.embed_tokens(input_ids)) * mask.unsqueeze(-1)
        return EncoderOutput(tokens=tokens, mask=mask, pooled=masked_mean(tokens, mask))
