"""Symmetric InfoNCE (CLIP-style) loss with a learnable, clamped temperature."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SymmetricInfoNCE(nn.Module):
    """Symmetric InfoNCE over a batch of paired embeddings; row ``i`` of ``a`` matches row ``i`` of ``b``.

    ``logits = normalize(a) @ normalize(b).T / t`` and the loss is the mean of the cross-entropy
    of ``logits`` (a -> b) and ``logits.T`` (b -> a) with targets ``arange(B)``.

    With ``queries`` (row indices), only those rows are scored as queries, each against every row of the
    other side, and the result is their share of the full loss (their cross-entropy sum divided by ``B``):
    the shares of disjoint query sets add up to the full loss. Under DDP each rank scores its own rows
    against the gathered gallery (``task.loss_scope: local``): ``[B_rank, B]`` logits instead of ``[B, B]``.

    The temperature is stored as ``log_temperature`` (a parameter when ``learnable``, else a
    buffer) and clamped to ``[min_temperature, max_temperature]`` in log space on every forward,
    so its gradient is untouched inside the range and zero beyond a bound.

    Args:
        init_temperature: starting temperature; must lie within the bounds.
        min_temperature: lower bound of the temperature (> 0).
        max_temperature: upper bound of the temperature.
        learnable: train the temperature (parameter) or keep it fixed (buffer).
    """

    def __init__(
        self,
        *,
        init_temperature: float = 0.07,
        min_temperature: float = 0.01,
        max_temperature: float = 1.0,
        learnable: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 < min_temperature <= max_temperature:
            raise ValueError(
                f"SymmetricInfoNCE needs 0 < min_temperature <= max_temperature, "
                f"got min_temperature={min_temperature}, max_temperature={max_temperature}"
            )
        if not min_temperature <= init_temperature <= max_temperature:
            raise ValueError(
                f"SymmetricInfoNCE: init_temperature={init_temperature} lies outside "
                f"[{min_temperature}, {max_temperature}]"
            )
        self.min_temperature = float(min_temperature)
        self.max_temperature = float(max_temperature)
        self.learnable = bool(learnable)
        log_t = torch.tensor(math.log(init_temperature), dtype=torch.float32)
        if learnable:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)

    def _clamped_temperature(self) -> torch.Tensor:
        """The temperature as a 0-d tensor, clamped to the bounds (keeps the graph)."""
        log_t = self.log_temperature.clamp(math.log(self.min_temperature), math.log(self.max_temperature))
        return log_t.exp()

    @property
    def temperature(self) -> float:
        """The current (clamped) temperature as a Python float."""
        return float(self._clamped_temperature().detach())

    def forward(self, a: torch.Tensor, b: torch.Tensor, queries: torch.Tensor | None = None) -> torch.Tensor:
        """Loss for paired embeddings ``a`` [B, D] and ``b`` [B, D] (``queries``: [Q] row indices, see the class
        docstring); returns a scalar tensor."""
        if a.ndim != 2 or a.shape != b.shape:
            raise ValueError(
                f"SymmetricInfoNCE expects two [B, D] tensors of the same shape, got "
                f"{tuple(a.shape)} and {tuple(b.shape)}"
            )
        a = F.normalize(a, dim=-1)
        b = F.normalize(b, dim=-1)
        t = self._clamped_temperature().to(a.dtype)
        if queries is not None:
            if queries.numel() == 0:  # no rows of one's own: a zero that still touches everything (DDP-safe)
                return (a.sum() + b.sum()) * 0.0 + t * 0.0
            scored = F.cross_entropy(a[queries] @ b.T / t, queries, reduction="sum") + F.cross_entropy(
                b[queries] @ a.T / t, queries, reduction="sum")
            return 0.5 * scored / a.shape[0]
        logits = a @ b.T / t
        targets = torch.arange(a.shape[0], device=a.device)
        return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature:.4g}, bounds=[{self.min_temperature}, "
            f"{self.max_temperature}], learnable={self.learnable}"
        )
