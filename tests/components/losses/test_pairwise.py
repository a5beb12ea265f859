"""swap_consistency: zero for a swap-equivariant comparator, positive otherwise, differentiable."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmtrain.components.losses.pairwise import swap_consistency


class EquivariantComparator(nn.Module):
    """Logits (First, Second, Similar) from a symmetric and an antisymmetric feature of (a, b).

    z = w . (g(a) - g(b)) flips sign exactly when a and b swap, and s = f(a) + f(b) does not,
    so logits(b, a) == logits(a, b)[:, (1, 0, 2)] bit for bit.
    """

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.f = nn.Linear(dim, 4)
        self.g = nn.Linear(dim, 4)
        self.base = nn.Linear(4, 1)
        self.similar = nn.Linear(4, 1)
        self.w = nn.Linear(4, 1, bias=False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        s = torch.tanh(self.f(a)) + torch.tanh(self.f(b))
        z = self.w(self.g(a) - self.g(b))
        h = self.base(s)
        return torch.cat([h + z, h - z, self.similar(s)], dim=-1)


class ConcatComparator(nn.Module):
    """An ordinary comparator over concat(a, b): nothing makes it swap-equivariant."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.net = nn.Linear(2 * dim, 3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([a, b], dim=-1))


def test_zero_for_equivariant_model() -> None:
    torch.manual_seed(0)
    model = EquivariantComparator()
    a, b = torch.randn(16, 8), torch.randn(16, 8)
    loss = swap_consistency(model(a, b), model(b, a))
    assert loss.item() == 0.0


def test_positive_with_gradients_otherwise() -> None:
    torch.manual_seed(0)
    model = ConcatComparator()
    a, b = torch.randn(16, 8), torch.randn(16, 8)
    loss = swap_consistency(model(a, b), model(b, a))
    assert loss.item() > 0
    loss.backward()
    assert model.net.weight.grad is not None and model.net.weight.grad.abs().sum() > 0


def test_is_symmetric_kl() -> None:
    gen = torch.Generator().manual_seed(1)
    ab, ba = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    p = ab.softmax(-1)
    q = ba[:, [1, 0, 2]].softmax(-1)
    kl_pq = (p * (p / q).log()).sum(-1)
    kl_qp = (q * (q / p).log()).sum(-1)
    expected = (0.5 * (kl_pq + kl_qp)).mean()
    assert swap_consistency(ab, ba).item() == pytest.approx(expected.item(), rel=1e-5)


def test_rejects_bad_mirror_and_shapes() -> None:
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="permutation"):
        swap_consistency(x, x, mirror=(0, 0, 2))
    with pytest.raises(ValueError, match="own inverse"):
        swap_consistency(x, x, mirror=(1, 2, 0))
    with pytest.raises(ValueError, match="same shape"):
        swap_consistency(x, torch.randn(3, 3))
