"""Gated fusion: learned, presence-aware weights over per-modality pooled vectors."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mmtrain.components.encoders.base import EncoderOutput
from mmtrain.components.fusion.projection import ModalityProjection

GATES = ("softmax", "sigmoid")


class GatedFusion(nn.Module):
    """Weighted sum of projected pooled vectors with gates computed from those vectors.

    Each modality's ``pooled [B, D_m]`` is projected to ``h_m [B, H]``. One scalar gate per
    modality comes from ``Linear(concat_m h_m)``: ``softmax`` over the present modalities, or an
    independent ``sigmoid`` each. A modality absent for a sample (all-``False`` mask) has
    ``h_m = 0`` and gate exactly 0, so neither its tokens nor its pooled vector can affect that
    sample.

    Output:
        tokens: ``[B, M, hidden_dim]`` the projected per-modality vectors ``h_m`` (sorted names).
        mask: ``[B, M]`` modality presence.
        pooled: ``[B, hidden_dim]`` ``LayerNorm(sum_m g_m h_m)`` (finite when nothing is present).
    """

    def __init__(
        self,
        *,
        input_dims: Mapping[str, int],
        hidden_dim: int,
        gate: str = "softmax",
        dropout: float = 0.0,
    ) -> None:
        """Args:
        input_dims: modality name -> encoder ``output_dim`` (injected by the builder).
        hidden_dim: common width ``H`` and ``output_dim``.
        gate: ``"softmax"`` (gates sum to 1 over present modalities) or ``"sigmoid"``.
        dropout: dropout on the fused vector.
        """
        super().__init__()
        if gate not in GATES:
            raise ValueError(f"GatedFusion: gate must be one of {GATES}, got {gate!r}")
        self.projection = ModalityProjection(
            input_dims=input_dims, hidden_dim=hidden_dim, owner=type(self).__name__
        )
        num = len(self.projection.names)
        self.gate_kind = gate
        self.gate = nn.Linear(num * hidden_dim, num)
        self.norm = nn.LayerNorm(hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.output_dim = hidden_dim

    def gates(self, vectors: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Args:
            vectors: ``[B, M, H]`` projected pooled vectors (zero where absent).
            present: ``[B, M]`` bool.

        Returns:
            ``[B, M]`` gates, exactly 0 for absent modalities.
        """
        logits = self.gate(vectors.flatten(1))  # [B, M]
        if self.gate_kind == "sigmoid":
            weights = torch.sigmoid(logits)
        else:
            logits = logits.masked_fill(~present, torch.finfo(logits.dtype).min)
            weights = torch.softmax(logits, dim=-1)
        return torch.where(present, weights, torch.zeros_like(weights))

    def forward(self, inputs: dict[str, EncoderOutput]) -> EncoderOutput:
        """Args:
            inputs: ``{name: EncoderOutput(tokens [B, N_m, D_m], mask [B, N_m], pooled [B, D_m])}``.

        Returns:
            ``EncoderOutput`` as described in the class docstring.
        """
        projected = self.projection.pooled(inputs)
        vectors = torch.stack([v for v, _ in projected.values()], dim=1)  # [B, M, H]
        present = torch.stack([p for _, p in projected.values()], dim=1)  # [B, M]
        weights = self.gates(vectors, present)
        fused = (weights.unsqueeze(-1) * vectors).sum(dim=1)
        pooled = self.dropout(self.norm(fused))
        return EncoderOutput(tokens=vectors, mask=present, pooled=pooled)
