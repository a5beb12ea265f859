"""Building blocks shared by the fusion modules.

Everything attention-shaped lives here once: rotary position embedding (RoPE), masked attention
that stays finite when every key of a sample is padding, an attention layer with an optional
per-head sigmoid output gate, a feed-forward layer and pre-norm transformer / cross-attention
blocks.

Shape legend: ``B`` batch, ``N`` query tokens, ``M`` key tokens, ``D`` model width, ``H`` heads,
``Dh = D // H`` head width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

Rope = tuple[torch.Tensor, torch.Tensor]
"""``(cos, sin)`` pair from :func:`rope_cos_sin`, each ``[B, N, Dh]``."""


# ----------------------------------------------------------------------------------------------
# Rotary position embedding
# ----------------------------------------------------------------------------------------------
def mask_positions(mask: torch.Tensor, factor: float = 1.0) -> torch.Tensor:
    """Position of every token counted over real tokens only, scaled by ``factor``.

    Computed from the mask of the current call, so nothing depends on earlier calls and left,
    right or interior padding all give real tokens the positions ``0, 1, 2, ...`` (times factor).

    Args:
        mask: ``[B, N]`` bool, ``True`` = real token.
        factor: multiplies every position (a per-modality "speed" of the rotation).

    Returns:
        ``[B, N]`` float32 positions; a padding token repeats the previous real token's position.
    """
    positions = (mask.long().cumsum(dim=1) - 1).clamp_min(0)
    return positions.to(torch.float32) * float(factor)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, base: float = 10000.0) -> Rope:
    """Cosine and sine tables of rotary embedding for arbitrary (possibly fractional) positions.

    Args:
        positions: ``[..., N]`` positions (any float or int dtype).
        head_dim: ``Dh``, must be even.
        base: wavelength base of the frequencies.

    Returns:
        ``(cos, sin)``, each ``[..., N, Dh]`` float32 (halves repeated, rotate-half convention).
    """
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
    exponent = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / (base**exponent)  # [Dh/2]
    angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq  # [..., N, Dh/2]
    angles = torch.cat([angles, angles], dim=-1)  # [..., N, Dh]
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[..., Dh] -> [..., Dh]``: ``(x1, x2) -> (-x2, x1)`` over the two halves of the last axis."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` by its positions' angles.

    Args:
        x: ``[B, H, N, Dh]`` queries or keys.
        cos, sin: ``[B, N, Dh]`` (or ``[N, Dh]``) from :func:`rope_cos_sin`.

    Returns:
        ``[B, H, N, Dh]`` in ``x``'s dtype. For rotated ``q`` at position ``m`` and ``k`` at
        ``n``, ``q . k`` depends on ``m - n`` only.
    """
    if cos.dim() == 3:  # per-sample positions: broadcast over heads
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    out = x.to(torch.float32) * cos + rotate_half(x.to(torch.float32)) * sin
    return out.to(x.dtype)


# ----------------------------------------------------------------------------------------------
# Masked attention
# ----------------------------------------------------------------------------------------------
def masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Scaled dot-product attention with a key padding mask that never returns NaN.

    ``F.scaled_dot_product_attention`` gives NaN for a query whose keys are all masked. Such a
    sample (e.g. its only key modality is absent) gets an all-zero attention output instead, and
    the values it would have read get no gradient.

    Args:
        q: ``[B, H, N, Dh]``.
        k, v: ``[B, H, M, Dh]``.
        key_mask: ``[B, M]`` bool, ``True`` = may be attended to; ``None`` = every key is real.
        dropout_p: attention dropout probability (pass 0 in eval).

    Returns:
        ``[B, H, N, Dh]``.
    """
    if key_mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    has_key = key_mask.any(dim=1)  # [B]
    # Let key-less samples attend to everything (finite), then zero their output below.
    safe_mask = key_mask | ~has_key[:, None]
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=safe_mask[:, None, None, :], dropout_p=dropout_p
    )
    return torch.where(has_key[:, None, None, None], out, torch.zeros_like(out))


class MultiHeadAttention(nn.Module):
    """Multi-head (self- or cross-) attention with key padding mask, RoPE and an output gate.

    With ``gated=True`` a sigmoid gate per head, computed from the query input, multiplies the
    attention output of that head before the output projection (gated attention, which lets a
    head output nothing instead of dumping its probability mass on a sink token).
    """

    def __init__(self, *, dim: int, num_heads: int, dropout: float = 0.0, gated: bool = False) -> None:
        """Args:
        dim: ``D``, width of queries, keys, values and output.
        num_heads: ``H``; must divide ``dim``.
        dropout: attention-probability and output dropout.
        gated: add the per-head sigmoid output gate.
        """
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.gate_proj = nn.Linear(dim, num_heads) if gated else None
        self.out_dropout = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, D] -> [B, H, N, Dh]``."""
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        context: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        query_rope: Rope | None = None,
        key_rope: Rope | None = None,
    ) -> torch.Tensor:
        """Attend from ``query`` to ``context`` (``query`` itself when ``None``).

        Args:
            query: ``[B, N, D]``.
            context: ``[B, M, D]`` keys/values source, or ``None`` for self-attention.
            key_mask: ``[B, M]`` bool, ``True`` = real key.
            query_rope: ``(cos, sin)`` ``[B, N, Dh]`` applied to queries, or ``None``.
            key_rope: ``(cos, sin)`` ``[B, M, Dh]`` applied to keys, or ``None``.

        Returns:
            ``[B, N, D]``.
        """
        context = query if context is None else context
        q = self._split(self.q_proj(query))
        k = self._split(self.k_proj(context))
        v = self._split(self.v_proj(context))
        if query_rope is not None:
            q = apply_rope(q, *query_rope)
        if key_rope is not None:
            k = apply_rope(k, *key_rope)
        dropout_p = self.dropout if self.training else 0.0
        out = masked_attention(q, k, v, key_mask, dropout_p=dropout_p)  # [B, H, N, Dh]
        if self.gate_proj is not None:
            gate = torch.sigmoid(self.gate_proj(query))  # [B, N, H]
            out = out * gate.transpose(1, 2).unsqueeze(-1)
        width = self.num_heads * self.head_dim  # explicit: N may be 0
        out = out.transpose(1, 2).reshape(query.shape[0], query.shape[1], width)
        return self.out_dropout(self.out_proj(out))


class FeedForward(nn.Module):
    """``[..., D] -> [..., D]``: Linear, GELU, dropout, Linear, dropout."""

    def __init__(self, *, dim: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        inner = max(1, int(dim * mlp_ratio))
        self.net = nn.Sequential(
            nn.Linear(dim, inner),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(inner, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(GradientCheckpointingLayer):
    """Pre-norm self-attention + feed-forward block with key padding mask and optional RoPE.

    A ``GradientCheckpointingLayer``: with ``model.gradient_checkpointing`` on, training recomputes it in the
    backward pass instead of keeping its activations."""

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        gated: bool = False,
    ) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim=dim, num_heads=num_heads, dropout=dropout, gated=gated)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim=dim, mlp_ratio=mlp_ratio, dropout=dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, rope: Rope | None = None
    ) -> torch.Tensor:
        """Args:
            x: ``[B, N, D]``.
            mask: ``[B, N]`` bool key padding mask (``True`` = real).
            rope: ``(cos, sin)`` ``[B, N, Dh]`` applied to queries and keys, or ``None``.

        Returns:
            ``[B, N, D]``.
        """
        h = self.attn_norm(x)
        x = x + self.attn(h, key_mask=mask, query_rope=rope, key_rope=rope)
        return x + self.ffn(self.ffn_norm(x))


class CrossAttentionBlock(GradientCheckpointingLayer):
    """Pre-norm cross-attention (queries attend to a masked context) + optional feed-forward (checkpointed
    like :class:`TransformerBlock`)."""

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        gated: bool = False,
        feedforward: bool = True,
    ) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim)
        self.context_norm = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim=dim, num_heads=num_heads, dropout=dropout, gated=gated)
        self.ffn_norm = nn.LayerNorm(dim) if feedforward else None
        self.ffn = FeedForward(dim=dim, mlp_ratio=mlp_ratio, dropout=dropout) if feedforward else None

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Args:
            x: ``[B, N, D]`` queries.
            context: ``[B, M, D]``.
            context_mask: ``[B, M]`` bool (``True`` = real); all-``False`` rows are safe.

        Returns:
            ``[B, N, D]``.
        """
        x = x + self.attn(self.query_norm(x), self.context_norm(context), key_mask=context_mask)
        if self.ffn is not None and self.ffn_norm is not None:
            x = x + self.ffn(self.ffn_norm(x))
        return x
