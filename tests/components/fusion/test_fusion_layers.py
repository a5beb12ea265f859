"""Unit tests of the shared pieces: RoPE, masked attention, gated attention, projection checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmtrain.components.fusion.layers import (
    MultiHeadAttention,
    apply_rope,
    mask_positions,
    masked_attention,
    rope_cos_sin,
)
from mmtrain.components.fusion.projection import normalize_input_dims


def rope_scores(q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """``q [1,H,N,Dh]``, ``k [1,H,M,Dh]`` rotated at the given positions -> scores ``[1,H,N,M]``."""
    dh = q.shape[-1]
    q_rot = apply_rope(q, *rope_cos_sin(q_pos, dh))
    k_rot = apply_rope(k, *rope_cos_sin(k_pos, dh))
    return q_rot @ k_rot.transpose(-1, -2)


@pytest.mark.parametrize("shift", [3.0, 17.5, -2.25])
def test_rope_scores_depend_only_on_position_difference(shift: float) -> None:
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 5, 8, generator=gen), torch.randn(1, 2, 6, 8, generator=gen)
    q_pos, k_pos = torch.arange(5.0) * 0.7, torch.arange(6.0) * 1.3
    base = rope_scores(q, k, q_pos, k_pos)
    torch.testing.assert_close(rope_scores(q, k, q_pos + shift, k_pos + shift), base, atol=1e-4, rtol=1e-5)
    # ...and rotation is not a no-op: a different offset changes the scores.
    assert not torch.allclose(rope_scores(q, k, q_pos + shift, k_pos), base, atol=1e-3)


def test_rope_per_sample_positions_and_norm_preservation() -> None:
    x = torch.randn(2, 4, 6, 8)
    positions = torch.stack([torch.arange(6.0), torch.arange(6.0) + 4])  # [B, N]
    cos, sin = rope_cos_sin(positions, 8)
    assert cos.shape == (2, 6, 8)
    rotated = apply_rope(x, cos, sin)
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(apply_rope(x, *rope_cos_sin(torch.zeros(2, 6), 8)), x)
    with pytest.raises(ValueError, match="even"):
        rope_cos_sin(positions, 7)


def test_mask_positions_count_real_tokens_only() -> None:
    mask = torch.tensor([[True, True, True, False], [False, True, True, True], [False] * 4])
    pos = mask_positions(mask, factor=0.5)
    torch.testing.assert_close(pos[0, :3], torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(pos[1, 1:], torch.tensor([0.0, 0.5, 1.0]))
    assert torch.isfinite(pos).all()


def test_masked_attention_is_zero_and_finite_when_every_key_is_masked() -> None:
    q, k, v = torch.randn(2, 2, 3, 4), torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4, requires_grad=True)
    mask = torch.tensor([[False] * 5, [True, True, False, False, False]])
    out = masked_attention(q, k, v, mask)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    expected = torch.softmax(q[1] @ k[1, :, :2].transpose(-1, -2) / 2.0, dim=-1) @ v[1, :, :2]
    torch.testing.assert_close(out[1], expected)
    out.sum().backward()
    assert torch.equal(v.grad[0], torch.zeros_like(v.grad[0]))
    assert torch.equal(v.grad[1, :, 2:], torch.zeros_like(v.grad[1, :, 2:]))


def naive_sdpa(q, k, v, attn_mask=None, dropout_p=0.0):
    """Textbook attention: a row whose keys are all masked softmaxes -inf and gives NaN, as
    older PyTorch releases and some GPU kernels do (torch 2.13's CPU kernels return 0)."""
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def test_masked_attention_guard_holds_when_the_kernel_returns_nan(monkeypatch) -> None:
    q, k, v = torch.randn(2, 2, 3, 4), torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4)
    mask = torch.tensor([[False] * 5, [True, True, True, False, False]])
    assert torch.isnan(naive_sdpa(q, k, v, mask[:, None, None, :])[0]).all()
    reference = masked_attention(q, k, v, mask)
    monkeypatch.setattr(F, "scaled_dot_product_attention", naive_sdpa)
    guarded = masked_attention(q, k, v, mask)
    assert torch.isfinite(guarded).all()
    torch.testing.assert_close(guarded, reference)


def test_gate_multiplies_attention_output() -> None:
    torch.manual_seed(0)
    attn = MultiHeadAttention(dim=16, num_heads=4, gated=True).eval()
    x, mask = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
    before = attn(x, key_mask=mask)
    with torch.no_grad():
        attn.gate_proj.bias[1] += 4.0
    after = attn(x, key_mask=mask)
    assert not torch.allclose(before, after, atol=1e-4)
    with torch.no_grad():  # a closed gate (sigmoid ~ 0 everywhere) leaves only the output bias
        attn.gate_proj.weight.zero_()
        attn.gate_proj.bias.fill_(-60.0)
    closed = attn(x, key_mask=mask)
    torch.testing.assert_close(closed, attn.out_proj.bias.expand_as(closed), atol=1e-6, rtol=0)
    assert MultiHeadAttention(dim=16, num_heads=4).gate_proj is None


def test_attention_rejects_indivisible_heads() -> None:
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(dim=30, num_heads=4)


def test_input_dims_are_sorted_and_validated() -> None:
    assert list(normalize_input_dims({"video": 3, "audio": 2}, owner="X")) == ["audio", "video"]
    with pytest.raises(ValueError, match="'audio'"):
        normalize_input_dims({"audio": 0}, owner="X")
    with pytest.raises(ValueError, match="empty"):
        normalize_input_dims({}, owner="X")
