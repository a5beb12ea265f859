"""SymmetricInfoNCE against a hand computation, temperature gradient and clamping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmtrain.components.losses.contrastive import SymmetricInfoNCE


def _hand_infonce(a: np.ndarray, b: np.ndarray, t: float) -> float:
    """Explicit loops in float64: mean of row-wise and column-wise cross-entropy."""
    a = a / np.sqrt((a**2).sum(axis=1, keepdims=True))
    b = b / np.sqrt((b**2).sum(axis=1, keepdims=True))
    n = a.shape[0]
    logits = [[sum(a[i, k] * b[j, k] for k in range(a.shape[1])) / t for j in range(n)] for i in range(n)]
    a_to_b = 0.0
    b_to_a = 0.0
    for i in range(n):
        a_to_b += -logits[i][i] + math.log(sum(math.exp(logits[i][j]) for j in range(n)))
        b_to_a += -logits[i][i] + math.log(sum(math.exp(logits[j][i]) for j in range(n)))
    return 0.5 * (a_to_b / n + b_to_a / n)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_hand_computation(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(5, 4, generator=gen)
    b = torch.randn(5, 4, generator=gen)
    loss_fn = SymmetricInfoNCE(init_temperature=0.2)
    expected = _hand_infonce(a.double().numpy(), b.double().numpy(), 0.2)
    assert loss_fn(a, b).item() == pytest.approx(expected, rel=1e-5)


def test_gradient_reaches_temperature_and_embeddings() -> None:
    a = torch.randn(6, 8, requires_grad=True)
    b = torch.randn(6, 8, requires_grad=True)
    loss_fn = SymmetricInfoNCE()
    loss_fn(a, b).backward()
    grad = loss_fn.log_temperature.grad
    assert grad is not None and torch.isfinite(grad) and grad.abs() > 0
    assert a.grad is not None and a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


def test_clamping_at_bounds() -> None:
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    loss_fn = SymmetricInfoNCE(init_temperature=0.07, min_temperature=0.05, max_temperature=0.5)
    with torch.no_grad():  # as if the optimizer pushed the temperature out of range
        loss_fn.log_temperature.fill_(math.log(5.0))
    assert loss_fn.temperature == pytest.approx(0.5)
    assert loss_fn(a, b).item() == pytest.approx(_hand_infonce(a.double().numpy(), b.double().numpy(), 0.5), rel=1e-5)
    with torch.no_grad():
        loss_fn.log_temperature.fill_(math.log(1e-4))
    assert loss_fn.temperature == pytest.approx(0.05)
    loss_fn(a, b).backward()
    assert loss_fn.log_temperature.grad.item() == 0.0  # beyond the bound the clamp stops it


def test_fixed_temperature_and_bad_arguments() -> None:
    fixed = SymmetricInfoNCE(init_temperature=0.1, learnable=False)
    assert not list(fixed.parameters())
    assert "log_temperature" in fixed.state_dict()
    assert fixed.temperature == pytest.approx(0.1)
    with pytest.raises(ValueError, match="init_temperature"):
        SymmetricInfoNCE(init_temperature=2.0)
    with pytest.raises(ValueError, match="min_temperature"):
        SymmetricInfoNCE(min_temperature=0.0)
    with pytest.raises(ValueError, match="same shape"):
        SymmetricInfoNCE()(torch.randn(3, 4), torch.randn(3, 5))
