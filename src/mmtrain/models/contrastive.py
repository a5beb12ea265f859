"""``ContrastiveModel``: encoders -> one projection head per slot -> a shared embedding space.

A dual encoder (image + text, audio + text) or a tri-encoder (image + audio + text): every encoder
slot gets its own :class:`~mmtrain.components.heads.projection.ProjectionHead` (separate weights), all built
from the one ``projection`` spec with ``input_dim`` = that slot encoder's ``output_dim``. With a
``resampler`` spec (e.g. :class:`~mmtrain.components.lm.projectors.PerceiverResampler`), each slot first gets
its own resampler (latents cross-attending to the encoder's tokens, at the encoder's width), whose latents,
averaged, feed the projection (the edge-glass recipe: a Perceiver per encoder, then Matryoshka). Training
(pairwise InfoNCE, Matryoshka) and retrieval evaluation live in
:class:`mmtrain.engine.tasks.contrastive.ContrastiveTask`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.utils import ModelOutput

from mmtrain.config.validate import injects
from mmtrain.models.base import MultimodalPreTrainedModel, modality_of, run_part
from mmtrain.models.configuration import MultimodalConfig
from mmtrain.models.registry import ModelKind, config_fields, register_model_kind


class ContrastiveConfig(MultimodalConfig):
    """Specs of a contrastive model: ``encoders`` and one ``projection`` spec shared by the slots.

    Args (beyond :class:`MultimodalConfig`):
        projection: ProjectionHead spec (``output_dim``, optional ``hidden_dim``, ``dropout``,
            ``matryoshka_dims``, ``normalize``); ``input_dim`` is filled in per slot by the model.
        resampler: per-slot resampler spec (``num_tokens``, ``depth``, ``num_heads``) or ``None``;
            ``input_dim`` / ``output_dim`` are the slot encoder's ``output_dim``.
    """

    model_type = "mmtrain_contrastive"
    spec_keys = ("encoders", "projection", "resampler")  # no annotation: a class constant, not a config field

    projection: dict[str, Any] | None = None
    resampler: dict[str, Any] | None = None


@dataclass
class ContrastiveOutput(ModelOutput):
    """What :meth:`ContrastiveModel.forward` returns.

    Attributes:
        embeddings: slot -> ``[B, E]`` embedding (unit length when the projection normalises).
        present: slot -> ``[B]`` bool, ``True`` where the sample has that modality; rows of absent
            samples hold the projection of a zero vector and must not be used.
    """

    embeddings: dict[str, torch.Tensor] | None = None
    present: dict[str, torch.Tensor] | None = None


class ContrastiveModel(MultimodalPreTrainedModel):
    """Encoders -> per-slot projection heads -> embeddings in one shared space.

    Forward takes the processor's batch (any subset of ``pixel_values`` [B,C,H,W],
    ``input_features`` [B,F,T] / ``input_values`` [B,L], ``input_ids`` [B,L] with masks, ...,
    and ``<modality>_present`` [B] bool) and returns :class:`ContrastiveOutput`. Components for
    ``model.trainable``: each encoder slot and ``projection`` (all projection heads).
    """

    config_class = ContrastiveConfig

    def __init__(self, config: ContrastiveConfig) -> None:
        super().__init__(config)
        if not config.projection:
            raise ValueError("ContrastiveConfig needs a 'projection' spec (model.projection), e.g. {_target_: "
                             "mmtrain.components.heads.projection.ProjectionHead, output_dim: 64}.")
        if len(config.encoders) < 2:
            raise ValueError(f"a contrastive model aligns at least two encoder slots; model.encoders has "
                             f"{sorted(config.encoders)}. Add one, e.g. model/encoders/text=minilm.")
        self.resampler = None
        if config.resampler:
            self.resampler = nn.ModuleDict({name: self.build_part("resampler", input_dim=dim, output_dim=dim)
                                            for name, dim in self.encoder_dims.items()})
        self.projection = nn.ModuleDict(
            {name: self.build_part("projection", input_dim=dim) for name, dim in self.encoder_dims.items()}
        )
        self.finish_init()

    def components(self) -> dict[str, nn.Module]:
        parts = {**super().components(), "projection": self.projection}
        return parts if self.resampler is None else {**parts, "resampler": self.resampler}

    def pooled(self, name: str, output: Any) -> torch.Tensor:
        """The vector a slot's projection reads (see :func:`pooled_vector`)."""
        return pooled_vector(self.resampler, name, output)

    @property
    def embedding_dim(self) -> int:
        """Width ``E`` of the shared embedding space."""
        return embedding_width(self.projection)

    @property
    def matryoshka_dims(self) -> list[int]:
        """Nested widths the projection trains (descending, ``E`` first)."""
        return nested_widths(self.projection)

    def presence(self, name: str, batch: Mapping[str, Any], size: int, device: torch.device) -> torch.Tensor:
        """``[B]`` bool presence of slot ``name`` (see :func:`slot_presence`)."""
        return slot_presence(name, batch, size, device)

    def check_batch(self, batch: Mapping[str, Any]) -> None:
        outputs = self.encode_checked(batch)
        for name, output in outputs.items():
            vector = run_part("model.resampler", lambda n=name, o=output: self.pooled(n, o))
            embedding = run_part("model.projection", lambda n=name, v=vector: self.projection[n](v))
            if embedding.ndim != 2 or embedding.shape[1] != self.embedding_dim:
                raise ValueError(f"model.projection returns {tuple(embedding.shape)} for slot '{name}', "
                                 f"expected (batch, {self.embedding_dim}).")

    def forward(self, **batch: Any) -> ContrastiveOutput:
        outputs = self.encode(**batch)
        embeddings = {name: self.projection[name](self.pooled(name, out)) for name, out in outputs.items()}
        present = {name: self.presence(name, batch, e.shape[0], e.device) for name, e in embeddings.items()}
        return ContrastiveOutput(embeddings=embeddings, present=present)


def pooled_vector(resampler: nn.ModuleDict | None, name: str, output: Any) -> torch.Tensor:
    """``[B, D]``: slot ``name``'s pooled encoder output, or the mean of its resampler's latents ``[B, M, D]``."""
    if resampler is None:
        return output.pooled
    return resampler[name](output).mean(dim=1)


def embedding_width(projection: nn.ModuleDict) -> int:
    """Width ``E`` of the space the per-slot projection heads map into."""
    return int(next(iter(projection.values())).output_dim)


def nested_widths(projection: nn.ModuleDict) -> list[int]:
    """Nested (Matryoshka) widths the projection heads train, descending, ``E`` first."""
    return list(getattr(next(iter(projection.values())), "dims", [embedding_width(projection)]))


def slot_presence(name: str, batch: Mapping[str, Any], size: int, device: torch.device) -> torch.Tensor:
    """``[B]`` bool presence of slot ``name`` (``<slot>_present`` / ``<modality>_present``; all ``True`` without)."""
    present = batch.get(f"{name}_present", batch.get(f"{modality_of(name)}_present"))
    if present is None:
        return torch.ones(size, dtype=torch.bool, device=device)
    return present.to(device=device, dtype=torch.bool)


@injects(own=["id2label", "allowed_target_prefixes"], projection=["input_dim"], resampler=["input_dim", "output_dim"])
def build_contrastive_model(
    *,
    encoders: Mapping[str, Any],
    projection: Mapping[str, Any],
    id2label: Mapping[int, str],
    allowed_target_prefixes: Sequence[str],
    trainable: Mapping[str, bool] | None = None,
    resampler: Mapping[str, Any] | None = None,
) -> ContrastiveModel:
    """Build a contrastive dual/tri-encoder: each encoder slot gets its own projection head.

    Args: as :func:`build_multimodal_model`; ``projection`` is one ``ProjectionHead`` spec, built
    once per slot with ``input_dim`` = that encoder's ``output_dim``; ``resampler`` (optional) one
    resampler spec built per slot before the projection. ``id2label`` (the data's classes, possibly
    none) is only stored. There is no fusion and no classification head.
    """
    parts = {"projection": projection, **({"resampler": resampler} if resampler else {})}
    return ContrastiveModel(ContrastiveConfig(**config_fields(
        encoders=encoders, id2label=id2label, allowed_target_prefixes=allowed_target_prefixes, trainable=trainable,
        **parts,
    )))


def predict_embeddings(model: ContrastiveModel, processor: Any, batch: Mapping[str, Any],
                       **options: Any) -> list[dict[str, Any]]:
    """``predict`` of a contrastive model: per sample, each given modality's embedding and the cosine
    similarity of every pair of them."""
    with torch.no_grad():
        output = model(**batch)
    rows = []
    for row in range(next(iter(output.embeddings.values())).shape[0]):
        given = [m for m in processor.modalities if m in output.embeddings and bool(batch[f"{m}_present"][row])]
        embeddings = {m: output.embeddings[m][row].float() for m in given}
        rows.append({
            "embeddings": {m: [round(float(x), 6) for x in e.tolist()] for m, e in embeddings.items()},
            "cosine_similarity": {
                f"{a}_{b}": round(float(nn.functional.cosine_similarity(embeddings[a], embeddings[b], dim=0)), 6)
                for i, a in enumerate(given) for b in given[i + 1:]
            },
        })
    return rows


KIND = register_model_kind(ModelKind(
    name="contrastive", config_class=ContrastiveConfig, model_class=ContrastiveModel, builder=build_contrastive_model,
    predict=predict_embeddings,
))
