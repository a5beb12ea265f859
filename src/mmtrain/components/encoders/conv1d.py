"""A small 1-D convolutional encoder over a masked feature sequence."""

from __future__ import annotations

import torch
from torch import nn

from mmtrain.components.encoders.base import EncoderOutput, masked_mean


class ConvBlock(nn.Module):
    """Residual ``x + Dropout(GELU(Conv1d(x)))`` followed by LayerNorm, on ``[B, T, H]``."""

    def __init__(self, *, hidden_dim: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv1d(hidden_dim, hidden_dim, kernel_size, padding="same")
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, T, H]`` (padded positions already zero) -> ``[B, T, H]``."""
        y = self.conv(x.transpose(1, 2)).transpose(1, 2)
        return self.norm(x + self.dropout(self.act(y)))


class Conv1DEncoder(nn.Module):
    """Stack of same-length 1-D convolutions over time.

    A linear input projection ``D_in -> H`` is followed by ``num_layers`` residual conv blocks.
    Padded positions are set to zero before every conv layer (and in the output), so they act
    exactly like the conv's own zero padding at the sequence end: appending padded frames never
    changes the outputs at real positions, whatever the padded frames contain.

    Args:
        in_features: ``D_in``, width of the input features.
        hidden_dim: ``H``, width of every layer and of the output (``output_dim``).
        num_layers: number of conv blocks (>= 1).
        kernel_size: temporal kernel size (stride 1, "same" padding).
        dropout: dropout after each conv activation.
    """

    def __init__(
        self,
        *,
        in_features: int,
        hidden_dim: int = 32,
        num_layers: int = 2,
        kernel_size: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_layers < 1 or kernel_size < 1:
            raise ValueError(
                f"Conv1DEncoder needs num_layers >= 1 and kernel_size >= 1; got {num_layers}, {kernel_size}"
            )
        self.in_proj = nn.Linear(in_features, hidden_dim)
        self.blocks = nn.ModuleList(
            ConvBlock(hidden_dim=hidden_dim, kernel_size=kernel_size, dropout=dropout) for _ in range(num_layers)
        )
        self.in_features = int(in_features)
        self.output_dim = int(hidden_dim)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> EncoderOutput:
        """Encode a feature sequence.

        Args:
            features: ``[B, T, D_in]`` float.
            mask: ``[B, T]`` (1 / True = real position); ``None`` = all real.

        Returns:
            ``EncoderOutput`` with tokens ``[B, T, H]`` (zero at padding), mask ``[B, T]`` bool,
            pooled ``[B, H]`` (masked mean).
        """
        if features.dim() != 3 or features.shape[-1] != self.in_features:
            raise ValueError(
                f"Conv1DEncoder expects features [B, T, {self.in_features}]; got shape {tuple(features.shape)}"
            )
        if mask is None:
            mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        mask = mask.to(device=features.device).bool()
        pad = ~mask.unsqueeze(-1)
        x = self.in_proj(features.masked_fill(pad, 0.0))
        for block in self.blocks:
            x = block(x.masked_fill(pad, 0.0))
        x = x.masked_fill(pad, 0.0)
        return EncoderOutput(tokens=x, mask=mask, pooled=masked_mean(x, mask))
