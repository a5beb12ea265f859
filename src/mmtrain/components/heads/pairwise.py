"""Pairwise comparison head: two item vectors ``u, v`` [B, D] -> logits [B, 3] (First, Second, Similar)."""

from __future__ import annotations

import torch
from torch import nn

from mmtrain.components.heads.classification import ACTIVATIONS


def pair_features(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``[u, v, u - v, u * v]``: [B, 4D] from two [B, D] item vectors (order-sensitive)."""
    return torch.cat([u, v, u - v, u * v], dim=-1)


def symmetric_features(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``[u + v, |u - v|, u * v]``: [B, 3D], bit-identical for ``(u, v)`` and ``(v, u)``."""
    return torch.cat([u + v, (u - v).abs(), u * v], dim=-1)


def _mlp(input_dim: int, hidden_dim: int, output_dim: int, dropout: float, activation: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(input_dim, hidden_dim), ACTIVATIONS[activation](), nn.Dropout(dropout),
        nn.Linear(hidden_dim, output_dim),
    )


class PairComparisonHead(nn.Module):
    """Compares two items: which one scores higher (``First``/``Second``) or neither (``Similar``).

    Default: an MLP on ``[u, v, u - v, u * v]`` -> ``num_labels`` logits; it learns the mirror
    symmetry only from data (and the task's swap-consistency term).

    With ``swap_equivariant=True`` (3 classes in the order First, Second, Similar) the construction
    guarantees ``logits(v, u) == logits(u, v)[:, [1, 0, 2]]`` exactly (in eval mode; dropout is
    random in training): ``First = g(u, v)``, ``Second = g(v, u)`` with one MLP ``g`` on the
    order-sensitive features, ``Similar = h(u + v, |u - v|, u * v)`` on features that are
    bit-identical under the swap. ``g`` runs on each order separately, so the swapped call sees
    the very same input tensors (same shapes, same values) and returns the very same numbers.

    Args:
        input_dim: width D of each item vector (the fusion's ``output_dim``; injected).
        num_labels: number of classes (3 from a First/Second/Similar label map; injected).
        hidden_dim: width of the hidden layer(s).
        dropout: dropout after the activation.
        swap_equivariant: build the mirror symmetry into the head (needs ``num_labels == 3``).
        activation: one of ``gelu``, ``relu``, ``silu``, ``tanh``.
    """

    def __init__(
        self,
        *,
        input_dim: int,
        num_labels: int = 3,
        hidden_dim: int,
        dropout: float = 0.1,
        swap_equivariant: bool = False,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        if input_dim <= 0 or hidden_dim <= 0:
            raise ValueError(f"{owner}: input_dim and hidden_dim must be positive, got {input_dim}, {hidden_dim}")
        if num_labels < 2:
            raise ValueError(f"{owner}: num_labels must be >= 2, got {num_labels}")
        if swap_equivariant and num_labels != 3:
            raise ValueError(
                f"{owner}: swap_equivariant needs the 3 classes First, Second, Similar (in that order), "
                f"got num_labels={num_labels}; set model.head.swap_equivariant=false."
            )
        if activation not in ACTIVATIONS:
            raise ValueError(f"{owner}: unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        self.input_dim = int(input_dim)
        self.num_labels = int(num_labels)
        self.swap_equivariant = bool(swap_equivariant)
        if self.swap_equivariant:
            self.order_score = _mlp(4 * input_dim, hidden_dim, 1, dropout, activation)  # g
            self.similar_score = _mlp(3 * input_dim, hidden_dim, 1, dropout, activation)  # h
        else:
            self.mlp = _mlp(4 * input_dim, hidden_dim, num_labels, dropout, activation)

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Item vectors ``u``, ``v`` [B, input_dim] -> logits [B, num_labels]."""
        if u.dim() != 2 or u.shape != v.shape or u.shape[-1] != self.input_dim:
            raise ValueError(
                f"{type(self).__name__}: expected two item vectors [B, {self.input_dim}] (input_dim), "
                f"got {tuple(u.shape)} and {tuple(v.shape)}"
            )
        if not self.swap_equivariant:
            return self.mlp(pair_features(u, v))
        first = self.order_score(pair_features(u, v))  # [B, 1]
        second = self.order_score(pair_features(v, u))
        return torch.cat([first, second, self.similar_score(symmetric_features(u, v))], dim=-1)
