"""``LLMModel``: encoder features as pseudo-tokens inside a causal LM (LLaVA-style).

encoders -> one projector per slot (``[B, M, E]`` pseudo-tokens) -> written into the LM's
``inputs_embeds`` at the prompt's placeholder positions (``<VIDEO_PAD>``..., see
:mod:`mmtrain.lm.prompt`) -> causal LM. With a ``head``, the LM's last hidden state at the class
token (e.g. ``<EMO>``) is classified; with ``lm_labels`` the LM loss (-100 ignored) is returned.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.utils import ModelOutput

from mmtrain.encoders.base import EncoderOutput
from mmtrain.hf.base import MultimodalPreTrainedModel, run_part
from mmtrain.hf.configuration import MultimodalConfig


class LLMConfig(MultimodalConfig):
    """Specs of an LLM-decoder model (see :class:`MultimodalConfig` for ``encoders``/``trainable``).

    Args:
        projector: one projector spec, built per encoder slot (``input_dim``/``output_dim`` injected).
        decoder: causal LM spec (``mmtrain.lm.decoder.CausalLMDecoder``; ``vocab_size`` injected).
        head: classification head on the class token's hidden state, or ``None`` (LM loss only).
        lm_vocab_size: the prompt tokenizer's length (marker tokens included).
        media_token_ids: encoder slot -> id of its placeholder token.
        class_token_id: id of the class token (needed with a ``head``).
    """

    model_type = "mmtrain_llm"
    spec_keys = ("encoders", "projector", "decoder", "head")  # no annotation: a class constant

    projector: dict[str, Any] | None = None
    decoder: dict[str, Any] | None = None
    head: dict[str, Any] | None = None
    lm_vocab_size: int | None = None
    media_token_ids: dict[str, int] | None = None
    class_token_id: int | None = None


@dataclass
class LLMOutput(ModelOutput):
    """``loss`` (classification CE + LM loss, whichever apply), ``logits`` [B, C] (with a head),
    ``lm_loss``, ``lm_logits`` [B, L, V], ``hidden`` [B, L, E] (the LM's last hidden states)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    lm_logits: torch.Tensor | None = None
    hidden: torch.Tensor | None = None


class LLMModel(MultimodalPreTrainedModel):
    """Encoders + projectors + causal LM (+ a classification head at the class token).

    Forward takes the encoders' inputs (as for the other kinds) plus ``lm_input_ids`` /
    ``lm_attention_mask`` [B, L] from the prompt builder, optionally ``labels`` [B] (classes)
    and ``lm_labels`` [B, L] (next-token targets, -100 ignored).
    """

    config_class = LLMConfig

    def __init__(self, config: LLMConfig) -> None:
        super().__init__(config)
        if not config.decoder or not config.projector:
            raise ValueError("LLMConfig needs 'decoder' and 'projector' specs.")
        missing = sorted(set(config.encoders) - set(config.media_token_ids or {}))
        if missing:
            raise ValueError(f"LLMConfig.media_token_ids has no placeholder token for encoder slots {missing}.")
        self.decoder = self.build_part("decoder", vocab_size=config.lm_vocab_size)
        width = int(self.decoder.hidden_size)
        self.projector = nn.ModuleDict(
            {name: self.build_part("projector", input_dim=dim, output_dim=width) for name, dim in self.encoder_dims.items()}
        )
        self.head = None
        if config.head:
            if config.class_token_id is None:
                raise ValueError("a classification head needs the class token (LLMConfig.class_token_id).")
            self.head = self.build_part("head", input_dim=width, num_labels=config.num_labels)
        self.finish_init()

    def components(self) -> dict[str, nn.Module]:
        parts = {**super().components(), "projector": self.projector, "decoder": self.decoder}
        return parts if self.head is None else {**parts, "head": self.head}

    def pseudo_tokens(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Slot -> projected features ``[B, M, E]``."""
        return {name: self.projector[name](self.encode_one(name, **batch)) for name in self.encoders}

    def inputs_embeds(self, lm_input_ids: torch.Tensor, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Token embeddings ``[B, L, E]`` with each slot's pseudo-tokens at its placeholder positions.

        A sample holds either exactly ``M`` placeholders of a slot (the projector's count) or none
        (the modality is absent); anything else means the prompt and the model disagree.
        """
        embeds = self.decoder.embed(lm_input_ids)
        for name, feats in tokens.items():
            positions = lm_input_ids == int(self.config.media_token_ids[name])  # [B, L]
            counts = positions.sum(dim=1)
            wrong = [(i, int(c)) for i, c in enumerate(counts.tolist()) if c not in (0, feats.shape[1])]
            if wrong:
                raise ValueError(
                    f"prompt rows {wrong[:5]} hold a number of '{name}' placeholders other than the "
                    f"projector's {feats.shape[1]} pseudo-tokens (or 0); build prompts with the same "
                    "media_tokens as model.projector.num_tokens."
                )
            rows = counts > 0
            if bool(rows.any()):
                embeds = embeds.masked_scatter(positions[..., None], feats[rows].to(embeds.dtype))
        return embeds

    def class_hidden(self, lm_input_ids: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The last hidden state at each row's class token: ``[B, E]`` (exactly one per row)."""
        at = lm_input_ids == int(self.config.class_token_id)
        counts = at.sum(dim=1)
        if bool((counts != 1).any()):
            raise ValueError(f"every prompt needs exactly one class token; counts per row {counts.tolist()[:8]}.")
        return hidden[at]

    def check_batch(self, batch: Mapping[str, Any]) -> None:
        if batch.get("lm_input_ids") is None:
            raise ValueError("the batch has no lm_input_ids: an LLM model needs a prompt (data.processor.prompt).")
        outputs = self.encode_checked(batch)
        tokens = {n: run_part("model.projector", lambda n=n, o=o: self.projector[n](o)) for n, o in outputs.items()}
        embeds = run_part("model.decoder", lambda: self.inputs_embeds(batch["lm_input_ids"], tokens))
        out = run_part("model.decoder", lambda: self.decoder(embeds, batch.get("lm_attention_mask")))
        if self.head is not None:
            at = run_part("model.head", lambda: self.class_hidden(batch["lm_input_ids"], out.hidden_states[-1]))
            run_part("model.head", lambda: self.head(EncoderOutput(at[:, None], torch.ones_like(at[:, :1]), at)))

    def forward(
        self,
        lm_input_ids: torch.Tensor,
        lm_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        lm_labels: torch.Tensor | None = None,
        **batch: Any,
    ) -> LLMOutput:
        embeds = self.inputs_embeds(lm_input_ids, self.pseudo_tokens(batch))
        out = self.decoder(embeds, lm_attention_mask, labels=lm_labels)
        hidden = out.hidden_states[-1]
        logits = loss = None
        if self.head is not None:
            at = self.class_hidden(lm_input_ids, hidden)
            logits = self.head(EncoderOutput(at[:, None], torch.ones_like(at[:, :1]), at))
            if labels is not None:
                loss = nn.functional.cross_entropy(logits, labels)
        if out.loss is not None:
            loss = out.loss if loss is None else loss + out.loss
        return LLMOutput(loss=loss, logits=logits, lm_loss=out.loss, lm_logits=out.logits, hidden=hidden)
