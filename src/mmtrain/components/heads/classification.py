"""Classification heads: fused ``pooled [B, D]`` -> logits ``[B, num_labels]``."""

from __future__ import annotations

import torch
from torch import nn

from mmtrain.components.encoders.base import EncoderOutput

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


def _check_args(owner: str, input_dim: int, num_labels: int) -> None:
    if input_dim <= 0:
        raise ValueError(f"{owner}: input_dim must be positive, got {input_dim}")
    if num_labels < 1:
        raise ValueError(f"{owner}: num_labels must be >= 1, got {num_labels}")


def _pooled(owner: str, fused: EncoderOutput, input_dim: int) -> torch.Tensor:
    """``fused.pooled`` ``[B, input_dim]``, or a ``ValueError`` saying what arrived instead."""
    pooled = fused.pooled
    if pooled.dim() != 2 or pooled.shape[-1] != input_dim:
        raise ValueError(
            f"{owner}: expected pooled [B, {input_dim}] (input_dim), got {tuple(pooled.shape)}"
        )
    return pooled


class LinearClassifier(nn.Module):
    """Dropout then ``Linear(input_dim, num_labels)`` on the fused ``pooled`` vector."""

    def __init__(self, *, input_dim: int, num_labels: int, dropout: float = 0.0) -> None:
        """Args:
        input_dim: width of ``pooled`` (the fusion's ``output_dim``; injected by the builder).
        num_labels: number of classes (from the data's label map; injected by the builder).
        dropout: dropout on ``pooled`` before the linear layer.
        """
        super().__init__()
        _check_args(type(self).__name__, input_dim, num_labels)
        self.input_dim = input_dim
        self.num_labels = num_labels
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(input_dim, num_labels)

    def forward(self, fused: EncoderOutput) -> torch.Tensor:
        """``fused.pooled [B, input_dim]`` -> logits ``[B, num_labels]``."""
        pooled = _pooled(type(self).__name__, fused, self.input_dim)
        return self.classifier(self.dropout(pooled))


class MLPClassifier(nn.Module):
    """``Linear -> activation -> dropout -> Linear`` on the fused ``pooled`` vector."""

    def __init__(
        self,
        *,
        input_dim: int,
        num_labels: int,
        hidden_dim: int,
        dropout: float = 0.1,
        activation: str = "gelu",
    ) -> None:
        """Args:
        input_dim: width of ``pooled`` (the fusion's ``output_dim``; injected by the builder).
        num_labels: number of classes (from the data's label map; injected by the builder).
        hidden_dim: width of the hidden layer.
        dropout: dropout after the activation.
        activation: one of ``gelu``, ``relu``, ``silu``, ``tanh``.
        """
        super().__init__()
        owner = type(self).__name__
        _check_args(owner, input_dim, num_labels)
        if hidden_dim <= 0:
            raise ValueError(f"{owner}: hidden_dim must be positive, got {hidden_dim}")
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"{owner}: unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}"
            )
        self.input_dim = input_dim
        self.num_labels = num_labels
        self.mlp = nn.Sequential(
            nn.Linear(input_dim, hidden_dim),
            ACTIVATIONS[activation](),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_labels),
        )

    def forward(self, fused: EncoderOutput) -> torch.Tensor:
        """``fused.pooled [B, input_dim]`` -> logits ``[B, num_labels]``."""
        return self.mlp(_pooled(type(self).__name__, fused, self.input_dim))
