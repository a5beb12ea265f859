"""Projectors: an encoder's output -> a fixed number of pseudo-tokens in the LM's embedding space.

Each returns ``[B, num_tokens, output_dim]``; the prompt holds ``num_tokens`` placeholder tokens
per modality, and the LLM model writes the projector's output at those positions.
"""

from __future__ import annotations

import torch
from torch import nn

from mmtrain.components.encoders.base import EncoderOutput


def segment_means(tokens: torch.Tensor, mask: torch.Tensor, segments: int) -> torch.Tensor:
    """Split each sample's valid tokens into ``segments`` contiguous, near-equal runs and average each.

    Args:
        tokens: ``[B, N, D]``; mask: ``[B, N]`` (1 = real token); segments: ``M >= 1``.

    Returns:
        ``[B, M, D]``; a run is the mean of its tokens (repeated when a sample has fewer than ``M``
        tokens; zero for a sample without any).
    """
    b, n, _ = tokens.shape
    valid = mask.to(tokens.dtype)
    lengths = valid.sum(dim=1).clamp(min=1)  # [B]
    order = valid.cumsum(dim=1) - 1  # index of each real token among the real ones
    seg = torch.floor(order * segments / lengths[:, None]).clamp(0, segments - 1).long()  # [B, N]
    weights = nn.functional.one_hot(seg, segments).to(tokens.dtype) * valid[..., None]  # [B, N, M]
    counts = weights.sum(dim=1)  # [B, M]
    sums = torch.einsum("bnm,bnd->bmd", weights, tokens)
    means = sums / counts.clamp(min=1)[..., None]
    if n and segments > 1:  # fewer tokens than segments: empty runs take the nearest real run's mean
        empty = counts == 0
        if bool(empty.any()):
            src = torch.floor(torch.arange(segments, device=tokens.device)[None] * lengths[:, None] / segments)
            idx = src.clamp(max=n - 1).long()
            gathered = torch.gather(tokens, 1, idx[..., None].expand(-1, -1, tokens.shape[-1]))
            means = torch.where(empty[..., None], gathered * (lengths[:, None, None] > 0), means)
    return means


class TokenProjector(nn.Module):
    """Segment-mean pooling to ``num_tokens`` pseudo-tokens, then a Linear (or MLP) to the LM width.

    Args:
        input_dim: the encoder's ``output_dim`` (injected).
        output_dim: the LM's hidden size (injected).
        num_tokens: pseudo-tokens per sample (``1`` uses the encoder's ``pooled`` vector).
        hidden_dim: MLP inner width (``Linear -> GELU -> Linear``); ``None`` for one Linear.
    """

    def __init__(self, *, input_dim: int, output_dim: int, num_tokens: int = 1, hidden_dim: int | None = None) -> None:
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"TokenProjector: num_tokens must be >= 1, got {num_tokens}")
        self.num_tokens = int(num_tokens)
        self.output_dim = int(output_dim)
        self.net: nn.Module = (
            nn.Linear(input_dim, output_dim) if hidden_dim is None
            else nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, output_dim))
        )

    def forward(self, encoded: EncoderOutput) -> torch.Tensor:
        """``EncoderOutput`` (tokens ``[B, N, D]``) -> ``[B, num_tokens, output_dim]``."""
        if self.num_tokens == 1:
            return self.net(encoded.pooled)[:, None]
        return self.net(segment_means(encoded.tokens, encoded.mask, self.num_tokens))


class PerceiverResampler(nn.Module):
    """``num_tokens`` learned latents cross-attend to the encoder's (masked) tokens, then a feed-forward.

    Args:
        input_dim: the encoder's ``output_dim`` (injected).
        output_dim: the LM's hidden size (injected); latents live at this width.
        num_tokens: latents = pseudo-tokens per sample.
        depth: cross-attention + feed-forward layers.
        num_heads: attention heads (must divide ``output_dim``).
    """

    def __init__(
        self, *, input_dim: int, output_dim: int, num_tokens: int = 8, depth: int = 1, num_heads: int = 2
    ) -> None:
        super().__init__()
        if output_dim % num_heads:
            raise ValueError(f"PerceiverResampler: num_heads {num_heads} must divide output_dim {output_dim}")
        self.num_tokens = int(num_tokens)
        self.output_dim = int(output_dim)
        self.inputs = nn.Linear(input_dim, output_dim)
        self.latents = nn.Parameter(torch.randn(num_tokens, output_dim) * output_dim**-0.5)
        self.layers = nn.ModuleList(
            nn.ModuleDict({
                "norm_q": nn.LayerNorm(output_dim), "norm_kv": nn.LayerNorm(output_dim),
                "attn": nn.MultiheadAttention(output_dim, num_heads, batch_first=True),
                "norm_ff": nn.LayerNorm(output_dim),
                "ff": nn.Sequential(nn.Linear(output_dim, 4 * output_dim), nn.GELU(), nn.Linear(4 * output_dim, output_dim)),
            })
            for _ in range(depth)
        )

    def forward(self, encoded: EncoderOutput) -> torch.Tensor:
        """``EncoderOutput`` (tokens ``[B, N, D]``, mask ``[B, N]``) -> ``[B, num_tokens, output_dim]``."""
        tokens = self.inputs(encoded.tokens)
        ignore = ~encoded.mask.bool()
        ignore = ignore & ~ignore.all(dim=1, keepdim=True)  # a sample without tokens attends to its zeros
        latents = self.latents[None].expand(tokens.shape[0], -1, -1)
        for layer in self.layers:
            kv = layer["norm_kv"](tokens)
            attended, _ = layer["attn"](layer["norm_q"](latents), kv, kv, key_padding_mask=ignore, need_weights=False)
            latents = latents + attended
            latents = latents + layer["ff"](layer["norm_ff"](latents))
        return latents
