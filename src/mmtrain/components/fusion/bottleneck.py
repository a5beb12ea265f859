"""MBT bottleneck fusion: modalities exchange information only through shared bottleneck tokens.

After "Attention Bottlenecks for Multimodal Fusion" (Nagrani et al., 2021), with the gaps of the
earlier implementation closed: padding masks are honoured in every attention, an absent modality
does not contribute to the shared bottleneck, and rotary positions are computed from each call's
masks (no per-modality cache that goes stale when sequence lengths change).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mmtrain.components.encoders.base import EncoderOutput
from mmtrain.components.fusion.layers import Rope, TransformerBlock, mask_positions, rope_cos_sin
from mmtrain.components.fusion.projection import ModalityProjection, presence


class BottleneckFusion(nn.Module):
    """Per-modality transformer layers that share ``num_bottleneck_tokens`` bottleneck tokens.

    Each layer, for every modality ``m``: ``[tokens_m ; bottleneck]`` (``[B, N_m + nb, H]``)
    goes through modality ``m``'s own pre-norm transformer block (self-attention with the key
    padding mask, per-modality RoPE and per-head sigmoid output gate; then feed-forward). The new
    bottleneck is the average of the modalities' updated bottleneck copies, taken per sample over
    the modalities present in that sample (over all modalities if none is present, whose copies
    then only saw the bottleneck itself).

    RoPE: a real token's position is its index among the real tokens of its modality times
    ``rope_factor[m]`` (default 1.0); bottleneck tokens are not rotated (position 0). Positions
    are recomputed on every call from the masks.

    Output:
        tokens: ``[B, num_bottleneck_tokens, hidden_dim]`` final bottleneck tokens (LayerNorm).
        mask: ``[B, num_bottleneck_tokens]`` all ``True``.
        pooled: ``[B, hidden_dim]`` LayerNorm of the mean of the final (normed) bottleneck tokens.
    """

    def __init__(
        self,
        *,
        input_dims: Mapping[str, int],
        hidden_dim: int,
        num_heads: int,
        num_layers: int,
        num_bottleneck_tokens: int,
        dropout: float = 0.0,
        mlp_ratio: float = 4.0,
        rope_factor: Mapping[str, float] | None = None,
        rope_base: float = 10000.0,
        gated_attention: bool = True,
    ) -> None:
        """Args:
        input_dims: modality name -> encoder ``output_dim`` (injected by the builder).
        hidden_dim: common width ``H`` and ``output_dim``.
        num_heads: attention heads; must divide ``hidden_dim`` with an even head width (RoPE).
        num_layers: number of fusion layers.
        num_bottleneck_tokens: ``nb``, learned shared tokens.
        dropout: attention and feed-forward dropout.
        mlp_ratio: feed-forward inner width as a multiple of ``hidden_dim``.
        rope_factor: modality -> position scale (e.g. ``{video: 0.5}``); unlisted ones use 1.0.
        rope_base: RoPE wavelength base.
        gated_attention: multiply a per-head sigmoid gate (from the layer input) into attention.
        """
        super().__init__()
        owner = type(self).__name__
        self.projection = ModalityProjection(input_dims=input_dims, hidden_dim=hidden_dim, owner=owner)
        names = self.projection.names
        if num_layers < 1 or num_bottleneck_tokens < 1:
            raise ValueError(
                f"{owner}: num_layers and num_bottleneck_tokens must be >= 1, "
                f"got {num_layers} and {num_bottleneck_tokens}"
            )
        if hidden_dim % num_heads or (hidden_dim // num_heads) % 2:
            raise ValueError(
                f"{owner}: hidden_dim {hidden_dim} / num_heads {num_heads} must give an even "
                "integer head width (RoPE rotates pairs)"
            )
        factors = {str(k): float(v) for k, v in (rope_factor or {}).items()}
        unknown = sorted(set(factors) - set(names))
        if unknown:
            raise ValueError(
                f"{owner}: rope_factor names modality {', '.join(map(repr, unknown))} "
                f"not in input_dims ({names})"
            )
        self.rope_factor = {name: factors.get(name, 1.0) for name in names}
        self.rope_base = float(rope_base)
        self.head_dim = hidden_dim // num_heads
        self.bottleneck = nn.Parameter(torch.randn(num_bottleneck_tokens, hidden_dim) * 0.02)
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {
                    name: TransformerBlock(
                        dim=hidden_dim,
                        num_heads=num_heads,
                        mlp_ratio=mlp_ratio,
                        dropout=dropout,
                        gated=gated_attention,
                    )
                    for name in names
                }
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_dim)
        self.pooled_norm = nn.LayerNorm(hidden_dim)
        self.output_dim = hidden_dim

    def _rope(self, name: str, mask: torch.Tensor) -> Rope:
        """``(cos, sin)`` ``[B, N_m + nb, Dh]`` for ``[tokens_m ; bottleneck]`` of this call."""
        nb = self.bottleneck.shape[0]
        positions = mask_positions(mask, self.rope_factor[name])  # [B, N_m]
        positions = torch.cat([positions, positions.new_zeros(mask.shape[0], nb)], dim=1)
        return rope_cos_sin(positions, self.head_dim, self.rope_base)

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
        batch, nb = next(iter(states.values())).shape[0], self.bottleneck.shape[0]
        bottleneck = self.bottleneck.unsqueeze(0).expand(batch, -1, -1)
        bn_mask = masks[names[0]].new_ones(batch, nb)
        ropes = {name: self._rope(name, masks[name]) for name in names}
        seq_masks = {name: torch.cat([masks[name], bn_mask], dim=1) for name in names}

        present = torch.stack([presence(masks[n]) for n in names], dim=1)  # [B, M]
        weights = present.to(bottleneck.dtype)
        nobody = weights.sum(dim=1, keepdim=True) == 0
        weights = torch.where(nobody, torch.ones_like(weights), weights)
        weights = weights / weights.sum(dim=1, keepdim=True)  # [B, M], rows sum to 1

        for layer in self.layers:
            copies = []
            for name in names:
                n_tokens = states[name].shape[1]
                seq = torch.cat([states[name], bottleneck], dim=1)
                out = layer[name](seq, seq_masks[name], ropes[name])
                states[name], copy = out[:, :n_tokens], out[:, n_tokens:]
                copies.append(copy)
            bottleneck = torch.einsum("bm,bmnd->bnd", weights, torch.stack(copies, dim=1))

        tokens = self.norm(bottleneck)
        pooled = self.pooled_norm(tokens.mean(dim=1))  # through `norm` too: a pooled-only head trains it
        return EncoderOutput(tokens=tokens, mask=torch.ones_like(bn_mask), pooled=pooled)
