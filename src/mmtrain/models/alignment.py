"""Alignment heads inside an LLM-decoder model: contrastive, Matryoshka and LM terms in one model.

With ``model.alignment`` (a :class:`~mmtrain.components.heads.projection.ProjectionHead` spec), every encoder
slot also gets its own projection into a shared embedding space (optionally after its own resampler,
``model.align_resampler``, e.g. a Perceiver: the edge-glass recipe), beside the projector that makes its
LM pseudo-tokens. A slot without a prompt placeholder (a text tower read only for alignment) is then
allowed. ``task=align_generate`` trains the weighted sum of the LM loss and the contrastive and
Matryoshka terms on these embeddings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mmtrain.components.encoders.base import EncoderOutput
from mmtrain.models.contrastive import embedding_width, nested_widths, pooled_vector, slot_presence


class AlignmentHeads:
    """Mixin of :class:`~mmtrain.models.llm.LLMModel`: ``align_projection`` / ``align_resampler`` per slot."""

    align_projection: nn.ModuleDict | None  # set by build_alignment (no class default: nn.Module keeps
    align_resampler: nn.ModuleDict | None   # submodules outside __dict__, so a class None would shadow them)

    def build_alignment(self) -> None:
        """Build the per-slot projections (and resamplers) from ``config.alignment`` / ``config.align_resampler``."""
        config = self.config  # type: ignore[attr-defined]
        self.align_projection = self.align_resampler = None
        if not config.alignment:
            if config.align_resampler:
                raise ValueError("model.align_resampler is set without model.alignment (the projection it feeds).")
            return
        dims = self.encoder_dims  # type: ignore[attr-defined]
        if len(dims) < 2:
            raise ValueError(f"model.alignment aligns at least two encoder slots; model.encoders has {sorted(dims)}.")
        build = self.build_part  # type: ignore[attr-defined]
        if config.align_resampler:
            self.align_resampler = nn.ModuleDict(
                {name: build("align_resampler", input_dim=dim, output_dim=dim) for name, dim in dims.items()})
        self.align_projection = nn.ModuleDict({name: build("alignment", input_dim=dim) for name, dim in dims.items()})

    def alignment_parts(self) -> dict[str, nn.Module]:
        """``model.trainable`` names: ``alignment`` (the projections) and ``align_resampler``."""
        parts: dict[str, nn.Module] = {}
        if self.align_projection is not None:
            parts["alignment"] = self.align_projection
        if self.align_resampler is not None:
            parts["align_resampler"] = self.align_resampler
        return parts

    @property
    def embedding_dim(self) -> int:
        """Width ``E`` of the shared embedding space."""
        return embedding_width(self._projection())

    @property
    def matryoshka_dims(self) -> list[int]:
        """Nested widths the projections train (descending, ``E`` first)."""
        return nested_widths(self._projection())

    def _projection(self) -> nn.ModuleDict:
        if self.align_projection is None:
            raise ValueError("the model has no alignment heads: set model.alignment (a ProjectionHead spec).")
        return self.align_projection

    def align(self, outputs: Mapping[str, EncoderOutput],
              batch: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per slot: the embedding ``[B, E]`` of its encoder output and its presence ``[B]`` bool."""
        projection = self._projection()
        embeddings = {name: projection[name](pooled_vector(self.align_resampler, name, out))
                      for name, out in outputs.items()}
        present = {name: slot_presence(name, batch, e.shape[0], e.device) for name, e in embeddings.items()}
        return embeddings, present
