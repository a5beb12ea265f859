"""The interface every encoder and fusion module returns, and masking helpers."""

from __future__ import annotations

from typing import NamedTuple

import torch


class EncoderOutput(NamedTuple):
    """Tokens of one modality (or of a fused representation).

    A named tuple, so that tools walking a module's outputs find its tensors (DeepSpeed ZeRO-3 hooks its
    backward onto them to gather the module's own parameters again; a dataclass would hide them).

    Attributes:
        tokens: ``[B, N, D]`` token features.
        mask: ``[B, N]`` bool, ``True`` where a token is real (not padding, modality present).
        pooled: ``[B, D]`` one vector per sample (masked mean unless the module says otherwise).
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def with_presence(self, present: torch.Tensor | None) -> "EncoderOutput":
        """Drop every token of samples where the modality is absent.

        Args:
            present: ``[B]`` bool, ``True`` where the sample has this modality; ``None`` keeps all.
        """
        if present is None:
            return self
        present = present.to(device=self.mask.device, dtype=torch.bool)
        mask = self.mask & present[:, None]
        pooled = self.pooled * present[:, None].to(self.pooled.dtype)
        return EncoderOutput(tokens=self.tokens, mask=mask, pooled=pooled)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens.

    Args:
        tokens: ``[B, N, D]``.
        mask: ``[B, N]`` bool (``True`` = real).

    Returns:
        ``[B, D]``; zeros for a sample with no real token.
    """
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    total = (tokens * weights).sum(dim=1)
    count = weights.sum(dim=1).clamp_min(1.0)
    return total / count


def full_mask(tokens: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` all-``True`` mask for ``tokens`` of shape ``[B, N, D]``."""
    return torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
