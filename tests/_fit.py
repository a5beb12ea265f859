"""A few AdamW steps on one batch: the losses before and after (tests that a model's parts learn)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def fit_steps(model: torch.nn.Module, batch: dict[str, Any], steps: int, *, lr: float = 3e-3,
              loss: Callable[[Any], torch.Tensor] = lambda out: out.loss) -> tuple[float, float]:
    """``(loss before, loss after)`` of ``steps`` AdamW steps of ``model(**batch)`` over its trainable parameters."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    first = float(loss(model(**batch)).detach())
    for _ in range(steps):
        opt.zero_grad()
        loss(model(**batch)).backward()
        opt.step()
    return first, float(loss(model(**batch)).detach())
