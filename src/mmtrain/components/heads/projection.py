"""Projection heads for contrastive alignment, with optional Matryoshka (nested) dimensions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """Maps a modality's pooled vector into the shared embedding space.

    Linear when ``hidden_dim`` is ``None``, else ``Linear -> GELU -> Dropout -> Linear``. With
    ``matryoshka_dims``, the first ``d`` features of the embedding are trained to work on their
    own for each listed ``d`` (see :meth:`nested`).

    Args:
        input_dim: width of the pooled encoder vector (injected by the builder).
        output_dim: embedding width ``E``.
        hidden_dim: inner width of the MLP variant.
        dropout: dropout inside the MLP.
        matryoshka_dims: nested widths, each ``<= output_dim`` (``output_dim`` is always included).
        normalize: L2-normalise the embedding.
    """

    def __init__(
        self,
        *,
        input_dim: int,
        output_dim: int,
        hidden_dim: int | None = None,
        dropout: float = 0.0,
        matryoshka_dims: Sequence[int] | None = None,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        dims = sorted({int(d) for d in (matryoshka_dims or [])} | {int(output_dim)}, reverse=True)
        too_wide = [d for d in dims if d > output_dim or d < 1]
        if too_wide:
            raise ValueError(f"ProjectionHead: matryoshka_dims {too_wide} must be in [1, output_dim={output_dim}]")
        self.dims = dims
        self.normalize = bool(normalize)
        self.output_dim = int(output_dim)
        if hidden_dim is None:
            self.net: nn.Module = nn.Linear(input_dim, output_dim)
        else:
            self.net = nn.Sequential(
                nn.Linear(input_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, output_dim)
            )

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """``[B, input_dim] -> [B, output_dim]`` (unit length when ``normalize``)."""
        embedding = self.net(pooled)
        return nn.functional.normalize(embedding, dim=-1) if self.normalize else embedding

    def nested(self, embedding: torch.Tensor) -> dict[int, torch.Tensor]:
        """``{d: [B, d]}``: the first ``d`` features for every Matryoshka width, re-normalised."""
        out = {}
        for dim in self.dims:
            part = embedding[:, :dim]
            out[dim] = nn.functional.normalize(part, dim=-1) if self.normalize else part
        return out
