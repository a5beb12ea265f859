"""Perceiver resampler: a fixed number of learned latents read all modalities' tokens."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mmtrain.components.encoders.base import EncoderOutput
from mmtrain.components.fusion.layers import CrossAttentionBlock, TransformerBlock
from mmtrain.components.fusion.projection import ModalityProjection


class PerceiverResampler(nn.Module):
    """``num_latents`` learned latents cross-attend to every modality's tokens, ``num_layers`` times.

    Context: each modality's projected tokens plus a learned per-modality embedding,
    concatenated along the token axis with their padding masks (``[B, sum_m N_m, H]``). Each
    layer: latents cross-attend to the context (pre-norm, residual), then a self-attention +
    feed-forward block over the latents. A sample with no real context token skips the
    cross-attention (its latents still get the self-attention updates), so the output is finite.

    Output:
        tokens: ``[B, num_latents, hidden_dim]`` final latents (LayerNorm).
        mask: ``[B, num_latents]`` all ``True``.
        pooled: ``[B, hidden_dim]`` mean of the final latents.
    """

    def __init__(
        self,
        *,
        input_dims: Mapping[str, int],
        hidden_dim: int,
        num_heads: int,
        num_layers: int,
        num_latents: int,
        dropout: float = 0.0,
        mlp_ratio: float = 4.0,
    ) -> None:
        """Args:
        input_dims: modality name -> encoder ``output_dim`` (injected by the builder).
        hidden_dim: common width ``H`` and ``output_dim``.
        num_heads: attention heads; must divide ``hidden_dim``.
        num_layers: number of (cross-attention, self-attention + FFN) layers.
        num_latents: number of learned latent tokens (the output token count).
        dropout: attention and feed-forward dropout.
        mlp_ratio: feed-forward inner width as a multiple of ``hidden_dim``.
        """
        super().__init__()
        owner = type(self).__name__
        self.projection = ModalityProjection(input_dims=input_dims, hidden_dim=hidden_dim, owner=owner)
        if num_layers < 1 or num_latents < 1:
            raise ValueError(
                f"{owner}: num_layers and num_latents must be >= 1, got {num_layers} and {num_latents}"
            )
        self.latents = nn.Parameter(torch.randn(num_latents, hidden_dim) * 0.02)
        self.modality_embedding = nn.ParameterDict(
            {name: nn.Parameter(torch.randn(hidden_dim) * 0.02) for name in self.projection.names}
        )
        self.cross_layers = nn.ModuleList(
            CrossAttentionBlock(dim=hidden_dim, num_heads=num_heads, dropout=dropout, feedforward=False)
            for _ in range(num_layers)
        )
        self.self_layers = nn.ModuleList(
            TransformerBlock(dim=hidden_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_dim)
        self.output_dim = hidden_dim

    def forward(self, inputs: dict[str, EncoderOutput]) -> EncoderOutput:
        """Args:
            inputs: ``{name: EncoderOutput(tokens [B, N_m, D_m], mask [B, N_m], pooled)}``.

        Returns:
            ``EncoderOutput`` as described in the class docstring.
        """
        projected = self.projection.tokens(inputs)
        context = torch.cat(
            [tokens + self.modality_embedding[name] for name, (tokens, _) in projected.items()], dim=1
        )
        context_mask = torch.cat([mask for _, mask in projected.values()], dim=1)
        latents = self.latents.unsqueeze(0).expand(context.shape[0], -1, -1)
        for cross, block in zip(self.cross_layers, self.self_layers):
            latents = cross(latents, context, context_mask)
            latents = block(latents)
        tokens = self.norm(latents)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return EncoderOutput(tokens=tokens, mask=mask, pooled=tokens.mean(dim=1))
