"""MatryoshkaLoss: weighted mean over dims, seeded sampling, width errors."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from mmtrain.components.losses.contrastive import SymmetricInfoNCE
from mmtrain.components.losses.matryoshka import MatryoshkaLoss


def _pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(8, 16, generator=gen), torch.randn(8, 16, generator=gen)


def test_all_is_mean_of_per_dim_losses() -> None:
    a, b = _pair()
    inner = SymmetricInfoNCE()
    per_dim = [inner(a[:, :d], b[:, :d]).item() for d in (4, 8, 16)]
    loss = MatryoshkaLoss(loss=inner, dims=[4, 8, 16])(a, b)
    assert loss.item() == pytest.approx(sum(per_dim) / 3, rel=1e-6)
    weighted = MatryoshkaLoss(loss=inner, dims=[4, 8, 16], weights=[1.0, 2.0, 3.0])(a, b)
    expected = (per_dim[0] + 2 * per_dim[1] + 3 * per_dim[2]) / 6
    assert weighted.item() == pytest.approx(expected, rel=1e-6)


def test_sample_is_reproducible_and_covers_every_dim() -> None:
    a, b = _pair()
    dims = [2, 4, 8, 16]

    def run(seed: int) -> tuple[list[int], list[float]]:
        m = MatryoshkaLoss(loss=SymmetricInfoNCE(), dims=dims, mode="sample", seed=seed)
        used, values = [], []
        for _ in range(60):
            values.append(m(a, b).item())
            used.append(m.last_dim)
        return used, values

    used, values = run(7)
    assert run(7) == (used, values)
    assert run(8)[0] != used
    assert set(Counter(used)) == set(dims)
    inner = SymmetricInfoNCE()
    for d, v in zip(used[:5], values[:5]):  # the sampled value is the loss at that dim
        assert v == pytest.approx(inner(a[:, :d], b[:, :d]).item(), rel=1e-6)


def test_sample_resumes_from_state_dict_and_eval_uses_all() -> None:
    a, b = _pair()
    m = MatryoshkaLoss(loss=SymmetricInfoNCE(), dims=[2, 4, 8, 16], mode="sample", seed=3)
    for _ in range(5):
        m(a, b)
    state = m.state_dict()
    expected = []
    for _ in range(10):
        m(a, b)
        expected.append(m.last_dim)
    resumed = MatryoshkaLoss(loss=SymmetricInfoNCE(), dims=[2, 4, 8, 16], mode="sample", seed=3)
    resumed.load_state_dict(state)
    got = []
    for _ in range(10):
        resumed(a, b)
        got.append(resumed.last_dim)
    assert got == expected

    full = MatryoshkaLoss(loss=SymmetricInfoNCE(), dims=[2, 4, 8, 16], mode="all")(a, b)
    m.eval()
    assert m(a, b).item() == pytest.approx(full.item(), rel=1e-6)


def test_gradients_flow() -> None:
    a, b = (t.requires_grad_() for t in _pair())
    m = MatryoshkaLoss(loss=SymmetricInfoNCE(), dims=[4, 16])
    m(a, b).backward()
    assert a.grad.abs().sum() > 0 and m.loss.log_temperature.grad is not None


def test_errors_name_the_problem() -> None:
    a, b = _pair()
    with pytest.raises(ValueError, match="dim 32 exceeds the embedding width 16"):
        MatryoshkaLoss(loss=SymmetricInfoNCE(), dims=[8, 32])(a, b)
    with pytest.raises(ValueError, match="mode"):
        MatryoshkaLoss(loss=SymmetricInfoNCE(), dims=[8], mode="some")
    with pytest.raises(ValueError, match="weights"):
        MatryoshkaLoss(loss=SymmetricInfoNCE(), dims=[8, 16], weights=[1.0])
