"""ProjectionHead: shapes, normalisation, nested Matryoshka widths, gradients, errors."""

from __future__ import annotations

import pytest
import torch

from mmtrain.components.heads.projection import ProjectionHead


@pytest.mark.parametrize("hidden_dim", [None, 16])
def test_projection_shapes_norms_and_gradients(hidden_dim: int | None) -> None:
    torch.manual_seed(0)
    head = ProjectionHead(input_dim=12, output_dim=8, hidden_dim=hidden_dim, matryoshka_dims=[2, 4])
    pooled = torch.randn(5, 12)
    embedding = head(pooled)
    assert embedding.shape == (5, 8)
    assert torch.allclose(embedding.norm(dim=-1), torch.ones(5), atol=1e-6)
    nested = head.nested(embedding)
    assert sorted(nested) == [2, 4, 8]
    for dim, part in nested.items():
        assert part.shape == (5, dim)
        assert torch.allclose(part.norm(dim=-1), torch.ones(5), atol=1e-6)
        expected = embedding[:, :dim] / embedding[:, :dim].norm(dim=-1, keepdim=True)
        assert torch.allclose(part, expected, atol=1e-6)
    sum(p.sum() for p in nested.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())


def test_unnormalised_head_keeps_raw_features() -> None:
    head = ProjectionHead(input_dim=4, output_dim=3, normalize=False)
    pooled = torch.randn(2, 4)
    assert torch.allclose(head(pooled), head.net(pooled))


def test_too_wide_matryoshka_dim_is_named() -> None:
    with pytest.raises(ValueError, match=r"\[16\]"):
        ProjectionHead(input_dim=4, output_dim=8, matryoshka_dims=[4, 16])
