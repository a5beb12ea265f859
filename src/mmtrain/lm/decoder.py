"""``CausalLMDecoder``: any Hugging Face causal LM (GPT-2, Qwen2, Llama, mmtrain's TRM...) as a part.

Same constructor convention as the encoder towers (:mod:`mmtrain.encoders.hf_tower`):
``model_type`` + ``config`` (random init, no download) or a local ``pretrained_path`` written by
``save_pretrained``. ``vocab_size`` (injected by the LLM model builder: the tokenizer's length,
added marker tokens included) resizes the token embeddings (and a tied LM head) after building,
so the rebuilt model of an export has exactly the trained shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mmtrain.encoders.hf_tower import build_hf_config, build_hf_model, resolve_pretrained_path


class _AutoCausalLM:
    """``build_hf_model`` calls ``cls(config)`` / ``cls.from_pretrained(...)``; route both to the Auto class."""

    __name__ = "AutoModelForCausalLM"

    def __new__(cls, config: Any, **kwargs: Any) -> nn.Module:  # type: ignore[misc]
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_config(config, **kwargs)

    @staticmethod
    def from_pretrained(*args: Any, **kwargs: Any) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(*args, **kwargs)


class CausalLMDecoder(nn.Module):
    """A causal LM read through ``inputs_embeds``.

    Args:
        model_type: Hugging Face model type of the LM (``gpt2``, ``qwen2``, ``llama``, ``mmtrain_trm``...).
        config: config kwargs (random init) or a full ``to_dict()`` (see the tower convention).
        pretrained_path: local ``save_pretrained`` folder (weights and config read from it).
        vocab_size: token count after the marker tokens were added (injected by the builder).

    Attributes:
        lm: the Hugging Face ``*ForCausalLM`` module.
        hidden_size: width ``E`` of its token embeddings and hidden states.
    """

    def __init__(
        self,
        *,
        model_type: str,
        config: Mapping[str, Any] | None = None,
        pretrained_path: str | None = None,
        vocab_size: int | None = None,
    ) -> None:
        super().__init__()
        folder = resolve_pretrained_path(pretrained_path)
        hf_config = build_hf_config(model_type, config, folder)
        lm = build_hf_model(_AutoCausalLM, hf_config, folder)
        embeddings = lm.get_input_embeddings()
        if vocab_size is not None and int(vocab_size) != embeddings.num_embeddings:
            if int(vocab_size) < embeddings.num_embeddings and folder is not None:
                raise ValueError(
                    f"CausalLMDecoder: the tokenizer has {vocab_size} tokens but the pretrained LM in "
                    f"{folder} has {embeddings.num_embeddings}; use the LM's own tokenizer."
                )
            lm.resize_token_embeddings(int(vocab_size), mean_resizing=False)
        self.lm = lm
        self.hidden_size = int(lm.get_input_embeddings().embedding_dim)
        self.vocab_size = int(lm.get_input_embeddings().num_embeddings)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[B, L, E]`` of ``input_ids`` ``[B, L]``."""
        if input_ids.numel() and int(input_ids.max()) >= self.vocab_size:
            raise ValueError(
                f"token id {int(input_ids.max())} is outside the LM's {self.vocab_size} embeddings; "
                "the prompt tokenizer and model.decoder disagree."
            )
        return self.lm.get_input_embeddings()(input_ids)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> Any:
        """Run the LM on ``inputs_embeds`` ``[B, L, E]``; returns its ``CausalLMOutput`` with
        ``hidden_states`` (the last one is ``[B, L, E]``) and ``loss`` when ``labels`` [B, L] are given
        (-100 ignored, shifted inside the LM)."""
        return self.lm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels,
                       output_hidden_states=True, use_cache=False)
