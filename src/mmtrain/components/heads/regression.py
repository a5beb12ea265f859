"""Regression head: fused ``pooled [B, D]`` -> ``[B, num_outputs]`` continuous values."""

from __future__ import annotations

import torch
from torch import nn

from mmtrain.components.encoders.base import EncoderOutput
from mmtrain.components.heads.classification import ACTIVATIONS


class RegressionHead(nn.Module):
    """``Linear`` (or ``Linear -> activation -> dropout -> Linear`` with ``hidden_dim``) on the fused
    ``pooled`` vector, no output activation.

    Args:
        input_dim: width of ``pooled`` (the fusion's ``output_dim``; injected by the builder).
        num_outputs: values per sample (``model.num_outputs``; injected by the builder).
        hidden_dim: width of a hidden layer; ``None`` for a linear head.
        dropout: dropout on ``pooled`` (linear) or after the activation (hidden layer).
        activation: ``gelu``, ``relu``, ``silu`` or ``tanh`` (hidden layer only).
    """

    def __init__(self, *, input_dim: int, num_outputs: int, hidden_dim: int | None = None, dropout: float = 0.0,
                 activation: str = "gelu") -> None:
        super().__init__()
        owner = type(self).__name__
        if input_dim <= 0 or num_outputs < 1:
            raise ValueError(f"{owner}: input_dim must be positive and num_outputs >= 1, got {input_dim}, {num_outputs}")
        if hidden_dim is not None and hidden_dim <= 0:
            raise ValueError(f"{owner}: hidden_dim must be positive, got {hidden_dim}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"{owner}: unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        self.input_dim, self.num_outputs = input_dim, num_outputs
        if hidden_dim is None:
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(input_dim, num_outputs))
        else:
            self.net = nn.Sequential(nn.Linear(input_dim, hidden_dim), ACTIVATIONS[activation](), nn.Dropout(dropout),
                                     nn.Linear(hidden_dim, num_outputs))

    def forward(self, fused: EncoderOutput) -> torch.Tensor:
        """``fused.pooled [B, input_dim]`` -> ``[B, num_outputs]``."""
        pooled = fused.pooled
        if pooled.dim() != 2 or pooled.shape[-1] != self.input_dim:
            raise ValueError(f"{type(self).__name__}: expected pooled [B, {self.input_dim}] (input_dim), "
                             f"got {tuple(pooled.shape)}")
        return self.net(pooled)
