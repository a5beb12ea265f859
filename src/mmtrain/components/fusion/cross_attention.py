"""Cross-attention fusion: every modality's tokens attend to all the other modalities' tokens."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mmtrain.components.encoders.base import EncoderOutput
from mmtrain.components.fusion.layers import CrossAttentionBlock
from mmtrain.components.fusion.projection import ModalityProjection, presence, safe_masked_mean


class CrossAttentionFusion(nn.Module):
    """Stacked per-modality cross-attention blocks, then masked pooling.

    In each of ``num_layers`` layers, modality ``m``'s tokens (queries) attend to the
    concatenation of the other modalities' tokens from the previous layer (keys/values, with
    their padding masks), followed by residual + LayerNorm + feed-forward (pre-norm). Every
    modality has its own block per layer; all modalities update simultaneously.

    Output:
        tokens: ``[B, sum_m N_m, hidden_dim]`` final (normed) tokens, modalities in sorted order.
        mask: ``[B, sum_m N_m]`` the inputs' masks, concatenated.
        pooled: ``[B, hidden_dim]`` mean over present modalities of each modality's masked mean
            (every modality weighs the same whatever its token count; zeros if none present).
    """

    def __init__(
        self,
        *,
        input_dims: Mapping[str, int],
        hidden_dim: int,
        num_heads: int,
        num_layers: int,
        dropout: float = 0.0,
        mlp_ratio: float = 4.0,
    ) -> None:
        """Args:
        input_dims: modality name -> encoder ``output_dim`` (injected; at least two modalities).
        hidden_dim: common width ``H`` and ``output_dim``.
        num_heads: attention heads; must divide ``hidden_dim``.
        num_layers: number of cross-attention layers.
        dropout: attention and feed-forward dropout.
        mlp_ratio: feed-forward inner width as a multiple of ``hidden_dim``.
        """
        super().__init__()
        self.projection = ModalityProjection(
            input_dims=input_dims, hidden_dim=hidden_dim, owner=type(self).__name__
        )
        names = self.projection.names
        if len(names) < 2:
            raise ValueError(
                f"CrossAttentionFusion needs at least two modalities, got {names}; "
                "use IdentityFusion for a single modality"
            )
        if num_layers < 1:
            raise ValueError(f"CrossAttentionFusion: num_layers must be >= 1, got {num_layers}")
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {
                    name: CrossAttentionBlock(
                        dim=hidden_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout
                    )
                    for name in names
                }
            )
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
        names = list(projected)
        states = {name: tokens for name, (tokens, _) in projected.items()}
        masks = {name: mask for name, (_, mask) in projected.items()}
        for layer in self.layers:
            new_states = {}
            for name in names:
                others = [other for other in names if other != name]
                context = torch.cat([states[o] for o in others], dim=1)
                context_mask = torch.cat([masks[o] for o in others], dim=1)
                new_states[name] = layer[name](states[name], context, context_mask)
            states = new_states
        normed = {name: self.norm(states[name]) for name in names}
        per_modality = torch.stack(
            [safe_masked_mean(normed[n], masks[n]) for n in names], dim=1
        )  # [B, M, H]
        present = torch.stack([presence(masks[n]) for n in names], dim=1)  # [B, M]
        weights = present.to(per_modality.dtype)
        pooled = (per_modality * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True).clamp_min(1.0)
        tokens = torch.cat([normed[n] for n in names], dim=1)
        mask = torch.cat([masks[n] for n in names], dim=1)
        return EncoderOutput(tokens=tokens, mask=mask, pooled=pooled)
