"""Matryoshka wrapper: apply a pairwise embedding loss to nested prefixes of the features."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_MODES = ("all", "sample")


class MatryoshkaLoss(nn.Module):
    """Applies ``loss(a[:, :d], b[:, :d])`` for Matryoshka dims ``d``.

    Modes:
        ``"all"``: the weighted mean ``sum_d w_d * L_d / sum_d w_d`` over every dim.
        ``"sample"``: one dim per call, drawn (with probability proportional to its weight;
        uniform by default) from a ``torch.Generator`` seeded with ``seed`` and advanced each
        call, so a run is reproducible. Its expectation equals the ``"all"`` loss. In eval mode
        (``module.eval()``) the ``"all"`` loss is returned and the generator is not advanced, so
        validation neither adds noise nor shifts the training sequence. The generator state is
        saved in ``state_dict`` (extra state), so resuming continues the same sequence.

    Args:
        loss: a module with ``forward(a [B, d], b [B, d]) -> scalar``, e.g. ``SymmetricInfoNCE``.
        dims: prefix widths, each > 0 and <= the embedding width (checked on forward).
        mode: ``"all"`` or ``"sample"``.
        weights: one non-negative weight per dim (not all zero); default all 1.
        seed: seed of the generator used by ``"sample"``.
    """

    def __init__(
        self,
        *,
        loss: nn.Module,
        dims: list[int],
        mode: str = "all",
        weights: list[float] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"MatryoshkaLoss: mode must be one of {_MODES}, got {mode!r}")
        dims = [int(d) for d in dims]
        if not dims or any(d <= 0 for d in dims):
            raise ValueError(f"MatryoshkaLoss: dims must be a non-empty list of positive ints, got {dims}")
        if weights is None:
            weights = [1.0] * len(dims)
        if len(weights) != len(dims):
            raise ValueError(
                f"MatryoshkaLoss: {len(weights)} weights for {len(dims)} dims ({dims}); give one per dim"
            )
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"MatryoshkaLoss: weights must be non-negative and not all zero, got {weights}")
        self.loss = loss
        self.dims = dims
        self.mode = mode
        self.weights = [float(w) for w in weights]
        self.seed = int(seed)
        self._generator = torch.Generator(device="cpu")
        self._generator.manual_seed(self.seed)
        self.last_dim: int | None = None  # dim used by the latest "sample" call, for logging

    def _check_width(self, a: torch.Tensor, b: torch.Tensor) -> None:
        width = min(a.shape[-1], b.shape[-1])
        for d in self.dims:
            if d > width:
                raise ValueError(
                    f"MatryoshkaLoss: dim {d} exceeds the embedding width {width} "
                    f"(a: {tuple(a.shape)}, b: {tuple(b.shape)}, dims={self.dims})"
                )

    def sample_dim(self) -> int:
        """Draw the next dim from the seeded generator (advances it)."""
        probs = torch.tensor(self.weights, dtype=torch.float64)
        index = int(torch.multinomial(probs, 1, generator=self._generator).item())
        return self.dims[index]

    def forward(self, a: torch.Tensor, b: torch.Tensor, **options: Any) -> torch.Tensor:
        """Loss for ``a`` [B, D_a] and ``b`` [B, D_b] (every dim <= min(D_a, D_b)); scalar. ``options`` go to the
        wrapped loss (e.g. ``queries``)."""
        self._check_width(a, b)
        if self.mode == "sample" and self.training:
            d = self.sample_dim()
            self.last_dim = d
            return self.loss(a[:, :d], b[:, :d], **options)
        total = sum(w * self.loss(a[:, :d], b[:, :d], **options) for d, w in zip(self.dims, self.weights) if w > 0)
        return total / sum(self.weights)

    def get_extra_state(self) -> dict[str, Any]:
        return {"generator_state": self._generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._generator.set_state(state["generator_state"])

    def extra_repr(self) -> str:
        return f"dims={self.dims}, mode={self.mode!r}, weights={self.weights}, seed={self.seed}"
