"""Losses for pairwise comparators (First / Second / Similar)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _check_mirror(mirror: Sequence[int], classes: int) -> list[int]:
    mirror = [int(i) for i in mirror]
    if sorted(mirror) != list(range(classes)):
        raise ValueError(f"swap_consistency: mirror {mirror} is not a permutation of range({classes})")
    if any(mirror[mirror[i]] != i for i in range(classes)):
        raise ValueError(f"swap_consistency: mirror {mirror} must be its own inverse (swap twice = identity)")
    return mirror


def swap_consistency(
    logits_ab: torch.Tensor,
    logits_ba: torch.Tensor,
    *,
    mirror: Sequence[int] = (1, 0, 2),
) -> torch.Tensor:
    """Symmetric KL between the prediction for (a, b) and the mirrored prediction for (b, a).

    Reversing the pair must mirror the prediction: with classes (First, Second, Similar) the
    default ``mirror=(1, 0, 2)`` swaps First and Second and keeps Similar. With
    ``p = softmax(logits_ab)`` and ``q = softmax(logits_ba[:, mirror])`` the loss is
    ``mean_batch(0.5 * (KL(p || q) + KL(q || p)))``. It is exactly 0 when
    ``logits_ba == logits_ab[:, mirror]`` (``mirror`` must be an involution), and gradients
    flow into both inputs.

    Args:
        logits_ab: [B, C] logits for the pairs in the order (a, b).
        logits_ba: [B, C] logits for the same pairs reversed, (b, a).
        mirror: class permutation applied by swapping the pair (an involution of range(C)).

    Returns:
        A scalar tensor.
    """
    if logits_ab.ndim != 2 or logits_ab.shape != logits_ba.shape:
        raise ValueError(
            f"swap_consistency expects two [B, C] tensors of the same shape, got "
            f"{tuple(logits_ab.shape)} and {tuple(logits_ba.shape)}"
        )
    index = _check_mirror(mirror, logits_ab.shape[1])
    log_p = F.log_softmax(logits_ab, dim=-1)
    log_q = F.log_softmax(logits_ba[:, index], dim=-1)
    diff = log_p - log_q
    sym_kl = 0.5 * ((log_p.exp() - log_q.exp()) * diff).sum(dim=-1)
    return sym_kl.mean()
