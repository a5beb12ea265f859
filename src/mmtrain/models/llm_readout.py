"""The class readout of an LM-decoder model (``LLMModel``, ``VLMModel``): a head at the class token, or the LM
head's rows of the answer tokens at the last prompt position."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmtrain.components.encoders.base import EncoderOutput
from mmtrain.components.lm.decoder import head_token_logits


def check_readout(config: Any) -> None:
    """A model's class readout is a head or the answer tokens, not both; one answer token per class."""
    if config.head and config.answer_token_ids:
        raise ValueError("model.head is set and the prompt classifies at the answer token "
                         "(data.processor.prompt.label_answers): choose one (model.head=null for answer tokens).")
    if config.answer_token_ids and len(config.answer_token_ids) != config.num_labels:
        raise ValueError(f"data.processor.prompt.label_answers gives {len(config.answer_token_ids)} answers for "
                         f"{config.num_labels} classes {list(config.id2label.values())}; give one per class, in order.")


def class_readout(hidden: torch.Tensor, lm_input_ids: torch.Tensor, lm_attention_mask: torch.Tensor | None, *,
                  config: Any, head: nn.Module | None, lm_head: nn.Module) -> torch.Tensor | None:
    """Class logits ``[B, C]`` from an LM's last hidden states ``[B, L, E]`` at the class position: ``head``, or
    the LM head's rows of ``config.answer_token_ids``; ``None`` without either."""
    if head is None and not config.answer_token_ids:
        return None
    at = hidden[class_position(lm_input_ids, lm_attention_mask, config.class_token_id)]  # [B, E]
    if head is None:
        return head_token_logits(lm_head, at, config.answer_token_ids)
    return head(EncoderOutput(at[:, None], torch.ones_like(at[:, :1]), at))


def class_position(lm_input_ids: torch.Tensor, lm_attention_mask: torch.Tensor | None,
                   class_token_id: int | None) -> torch.Tensor:
    """``[B, L]`` bool, one True per row: the class token, or (classification at the answer token without
    one) the last attended position of the right-padded prompt, which predicts the answer."""
    if class_token_id is not None:
        at = lm_input_ids == int(class_token_id)
    else:
        mask = torch.ones_like(lm_input_ids) if lm_attention_mask is None else lm_attention_mask
        last = mask.sum(dim=1) - 1
        at = torch.zeros_like(lm_input_ids, dtype=torch.bool)
        at[torch.arange(len(last)), last] = True
    counts = at.sum(dim=1)
    if bool((counts != 1).any()):
        raise ValueError(f"every prompt needs exactly one class token; counts per row {counts.tolist()[:8]}.")
    return at
