"""Concat-pool fusion: each modality pooled on its own, the pooled vectors concatenated, an MLP."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mmtrain.components.encoders.base import EncoderOutput
from mmtrain.components.fusion.projection import ModalityProjection, safe_masked_mean


class ConcatPoolFusion(nn.Module):
    """Pool each modality over its real tokens, concatenate the M pooled vectors, then an MLP.

    Pooling per modality first gives every modality the same weight whatever its token count (a
    100-frame audio track does not drown 4 video frames); an absent modality contributes zeros.

    Output:
        tokens: ``[B, sum_m N_m, hidden_dim]`` projected tokens, modalities in sorted name order.
        mask: ``[B, sum_m N_m]`` the inputs' masks, concatenated the same way.
        pooled: ``[B, hidden_dim]`` ``MLP([mean_1; ...; mean_M])``; finite when nothing is present.
    """

    def __init__(
        self,
        *,
        input_dims: Mapping[str, int],
        hidden_dim: int,
        dropout: float = 0.0,
        mlp_ratio: float = 2.0,
    ) -> None:
        """Args:
        input_dims: modality name -> encoder ``output_dim`` (injected by the builder).
        hidden_dim: common width ``H`` and ``output_dim``.
        dropout: dropout inside the MLP.
        mlp_ratio: MLP inner width as a multiple of ``hidden_dim``.
        """
        super().__init__()
        self.projection = ModalityProjection(
            input_dims=input_dims, hidden_dim=hidden_dim, owner=type(self).__name__
        )
        inner = max(1, int(hidden_dim * mlp_ratio))
        width = hidden_dim * len(input_dims)
        self.mlp = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, inner),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(inner, hidden_dim),
        )
        self.output_dim = hidden_dim

    def forward(self, inputs: dict[str, EncoderOutput]) -> EncoderOutput:
        """Args:
            inputs: ``{name: EncoderOutput(tokens [B, N_m, D_m], mask [B, N_m], pooled)}``.

        Returns:
            ``EncoderOutput`` as described in the class docstring.
        """
        projected = self.projection.tokens(inputs)
        tokens = torch.cat([t for t, _ in projected.values()], dim=1)
        mask = torch.cat([m for _, m in projected.values()], dim=1)
        pooled = self.mlp(torch.cat([safe_masked_mean(t, m) for t, m in projected.values()], dim=-1))
        return EncoderOutput(tokens=tokens, mask=mask, pooled=pooled)
