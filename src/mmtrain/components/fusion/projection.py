"""Input checks and per-modality projection shared by the fusion modules.

Every fusion module receives ``input_dims`` (modality name -> that encoder's ``output_dim``) from
the model builder. Modalities are always handled in sorted name order, so parameter layout and
concatenation order do not depend on the order in which a config or builder lists them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mmtrain.components.encoders.base import EncoderOutput, masked_mean


def normalize_input_dims(input_dims: Mapping[str, int], *, owner: str) -> dict[str, int]:
    """Plain ``{name: dim}`` dict in sorted name order (accepts an OmegaConf ``DictConfig``).

    Raises:
        ValueError: empty mapping, non-positive dim, or a name that cannot be a module key.
    """
    if not input_dims:
        raise ValueError(f"{owner}: input_dims is empty; it needs at least one modality")
    dims: dict[str, int] = {}
    for name in sorted(str(k) for k in input_dims):
        dim = int(input_dims[name])
        if dim <= 0:
            raise ValueError(f"{owner}: input_dims[{name!r}] must be positive, got {dim}")
        if not name or "." in name:
            raise ValueError(f"{owner}: modality name {name!r} must be non-empty without '.'")
        dims[name] = dim
    return dims


def check_inputs(
    inputs: Mapping[str, EncoderOutput],
    input_dims: Mapping[str, int],
    *,
    owner: str,
    check_pooled: bool = False,
) -> None:
    """Raise a ``ValueError`` naming the modality when ``inputs`` does not match ``input_dims``.

    Checks: same modality names, ``tokens`` ``[B, N, D]`` with ``D == input_dims[name]``, ``mask``
    ``[B, N]``, one batch size across modalities, and (``check_pooled``) ``pooled`` ``[B, D]``.
    """
    unknown = sorted(set(inputs) - set(input_dims))
    missing = sorted(set(input_dims) - set(inputs))
    if unknown:
        raise ValueError(
            f"{owner}: got modality {', '.join(map(repr, unknown))} not in input_dims "
            f"(expected {sorted(input_dims)})"
        )
    if missing:
        raise ValueError(
            f"{owner}: modality {', '.join(map(repr, missing))} missing from inputs "
            f"(got {sorted(inputs)}); pass it with an all-False mask if it is absent"
        )
    batch_sizes: dict[str, int] = {}
    for name, dim in input_dims.items():
        out = inputs[name]
        if out.tokens.dim() != 3 or out.tokens.shape[-1] != dim:
            raise ValueError(
                f"{owner}: modality {name!r} tokens have shape {tuple(out.tokens.shape)}, "
                f"expected [B, N, {dim}] (input_dims[{name!r}] = {dim})"
            )
        if tuple(out.mask.shape) != tuple(out.tokens.shape[:2]):
            raise ValueError(
                f"{owner}: modality {name!r} mask has shape {tuple(out.mask.shape)}, "
                f"expected {tuple(out.tokens.shape[:2])} to match its tokens"
            )
        if check_pooled and tuple(out.pooled.shape) != (out.tokens.shape[0], dim):
            raise ValueError(
                f"{owner}: modality {name!r} pooled has shape {tuple(out.pooled.shape)}, "
                f"expected ({out.tokens.shape[0]}, {dim})"
            )
        batch_sizes[name] = out.tokens.shape[0]
    if len(set(batch_sizes.values())) > 1:
        raise ValueError(f"{owner}: modalities disagree on batch size: {batch_sizes}")


def clean_tokens(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, N, D]`` with every padded token set to exactly zero (NaN/inf-safe).

    Padding values then cannot reach any output, whatever they were.
    """
    return torch.where(mask.unsqueeze(-1), tokens, torch.zeros_like(tokens))


def safe_masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, N, D], [B, N] -> [B, D]`` mean over real tokens; zeros for a sample with none.

    Unlike a plain weighted sum, non-finite values at padded positions do not leak in.
    """
    return masked_mean(clean_tokens(tokens, mask), mask)


def presence(mask: torch.Tensor) -> torch.Tensor:
    """``[B, N] -> [B]`` bool: the sample has at least one real token of this modality."""
    return mask.any(dim=1)


class ModalityProjection(nn.Module):
    """One ``Linear(D_m, hidden) + LayerNorm`` per modality, plus the input checks.

    Brings modalities with different widths to a common width ``hidden_dim``; padded tokens are
    zeroed before projecting, so their original values never matter.
    """

    def __init__(self, *, input_dims: Mapping[str, int], hidden_dim: int, owner: str) -> None:
        """Args:
        input_dims: modality name -> encoder ``output_dim`` (``D_m``).
        hidden_dim: common output width ``H``.
        owner: class name used in error messages.
        """
        super().__init__()
        self.owner = owner
        self.input_dims = normalize_input_dims(input_dims, owner=owner)
        if hidden_dim <= 0:
            raise ValueError(f"{owner}: hidden_dim must be positive, got {hidden_dim}")
        self.proj = nn.ModuleDict(
            {
                name: nn.Sequential(nn.Linear(dim, hidden_dim), nn.LayerNorm(hidden_dim))
                for name, dim in self.input_dims.items()
            }
        )

    @property
    def names(self) -> list[str]:
        """Modality names in the fixed (sorted) order."""
        return list(self.input_dims)

    def check(self, inputs: Mapping[str, EncoderOutput], *, check_pooled: bool = False) -> None:
        """Validate ``inputs`` against ``input_dims`` (see :func:`check_inputs`)."""
        check_inputs(inputs, self.input_dims, owner=self.owner, check_pooled=check_pooled)

    def tokens(self, inputs: Mapping[str, EncoderOutput]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Validate and project every modality's tokens.

        Returns:
            ``{name: (tokens [B, N_m, H], mask [B, N_m] bool)}`` in sorted name order.
        """
        self.check(inputs)
        result: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name in self.names:
            mask = inputs[name].mask.to(torch.bool)
            result[name] = (self.proj[name](clean_tokens(inputs[name].tokens, mask)), mask)
        return result

    def pooled(self, inputs: Mapping[str, EncoderOutput]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Validate and project every modality's pooled vector.

        Returns:
            ``{name: (vector [B, H], present [B] bool)}``; an absent sample's vector is zero.
        """
        self.check(inputs, check_pooled=True)
        result: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name in self.names:
            present = presence(inputs[name].mask.to(torch.bool))
            pooled = inputs[name].pooled
            pooled = torch.where(present[:, None], pooled, torch.zeros_like(pooled))
            vector = self.proj[name](pooled)
            result[name] = (torch.where(present[:, None], vector, torch.zeros_like(vector)), present)
        return result
