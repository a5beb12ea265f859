"""``CausalLMDecoder``: any Hugging Face causal LM (GPT-2, Qwen2, Llama, mmtrain's TRM...) as a part.

Same constructor convention as the encoder towers (:mod:`mmtrain.components.encoders.hf_tower`):
``model_type`` + ``config`` (random init, no download) or a local ``pretrained_path`` written by
``save_pretrained``. ``vocab_size`` (injected by the LLM model builder: the tokenizer's length,
added marker tokens included) resizes the token embeddings (and a tied LM head) after building,
so the rebuilt model of an export has exactly the trained shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmtrain.components.encoders.hf_tower import build_hf_config, build_hf_model, resolve_pretrained_path


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
        if folder is None and vocab_size is not None:  # random init: build at the final size, no resize
            hf_config.vocab_size = int(vocab_size)
        lm = build_hf_model(_AutoCausalLM, hf_config, folder)
        if getattr(lm, "loss_type", None) is None:  # some LM classes leave it unset (transformers warns)
            lm.loss_type = "ForCausalLM"
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
        *,
        full_logits: bool = False,
    ) -> DecoderOutput:
        """Run the LM on ``inputs_embeds`` ``[B, L, E]``.

        The vocabulary projection (``[.., V]``, 50k wide for GPT-2's tokenizer) is the costly part,
        so it runs only where needed: at the scored positions when ``labels`` ``[B, L]`` are given
        (token ``t+1`` is predicted at ``t``; -100 ignored), everywhere only with ``full_logits``.
        """
        out = self.lm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, output_hidden_states=True,
                      use_cache=False, **({} if full_logits else {"logits_to_keep": 1}))
        hidden = out.hidden_states[-1]  # [B, L, E]: after the final norm, what the LM head reads
        result = DecoderOutput(hidden_states=out.hidden_states, logits=out.logits if full_logits else None)
        if labels is not None:
            targets = labels[:, 1:]
            scored = targets != -100  # [B, L-1]
            result.nll_sum = head_nll(self.lm.get_output_embeddings(), hidden[:, :-1][scored], targets[scored])
            result.token_count = scored.sum()
            result.loss = result.nll_sum / result.token_count.clamp(min=1)
        return result


def head_token_logits(head: nn.Module, hidden: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
    """Logits ``[N, C]`` of the vocabulary rows ``token_ids`` of an LM head (``nn.Linear``, possibly
    LoRA-wrapped or quantized: then the full ``[N, V]`` is made and its columns taken) at ``hidden`` ``[N, E]``."""
    ids = torch.as_tensor(token_ids, device=hidden.device)
    if type(head) is nn.Linear:  # the plain case: C rows, not the whole vocabulary
        bias = None if head.bias is None else head.bias[ids]
        return nn.functional.linear(hidden, head.weight[ids], bias)
    return head(hidden)[..., ids]


#: Scored positions per LM-head chunk (see :func:`head_nll`).
HEAD_CHUNK = 512


def _chunk_nll(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(head(hidden).float(), targets, reduction="sum")


def head_nll(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk: int = HEAD_CHUNK) -> torch.Tensor:
    """Summed next-token NLL of ``hidden`` ``[N, E]`` against ``targets`` ``[N]`` through the LM head.

    The logits ``[N, V]`` are the largest tensor of an LM step (1024 positions x a 152k vocabulary: 620 MB in
    float32, twice that with their gradient). Beyond ``chunk`` positions they are made ``chunk`` at a time,
    and in training each chunk is recomputed in the backward pass (non-reentrant checkpoint), so one chunk's
    logits are alive at a time; the sum is the same up to float rounding.
    """
    if hidden.shape[0] <= chunk:
        return _chunk_nll(head, hidden, targets)
    total = hidden.new_zeros((), dtype=torch.float32)
    recompute = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    for start in range(0, hidden.shape[0], chunk):
        part, wanted = hidden[start : start + chunk], targets[start : start + chunk]
        if recompute:
            total = total + checkpoint(_chunk_nll, head, part, wanted, use_reentrant=False)
        else:
            total = total + _chunk_nll(head, part, wanted)
    return total


@dataclass
class DecoderOutput:
    """``hidden_states`` (tuple; the last is ``[B, L, E]``), ``logits`` ``[B, L, V]`` (``full_logits``
    only), and with labels: ``loss`` (mean answer-token NLL), ``nll_sum`` and ``token_count``."""

    hidden_states: tuple[torch.Tensor, ...]
    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    nll_sum: torch.Tensor | None = None
    token_count: torch.Tensor | None = None
