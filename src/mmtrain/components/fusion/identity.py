"""Identity fusion for single-modality models."""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from mmtrain.components.encoders.base import EncoderOutput
from mmtrain.components.fusion.projection import check_inputs, normalize_input_dims


class IdentityFusion(nn.Module):
    """Pass the one modality's ``EncoderOutput`` through unchanged.

    Output: the input's ``tokens [B, N, D]``, ``mask [B, N]`` and ``pooled [B, D]``;
    ``output_dim == D``.
    """

    def __init__(self, *, input_dims: Mapping[str, int]) -> None:
        """Args:
        input_dims: exactly one ``{name: dim}`` entry (injected by the builder).

        Raises:
            ValueError: naming the modalities when there is not exactly one.
        """
        super().__init__()
        dims = normalize_input_dims(input_dims, owner=type(self).__name__)
        if len(dims) != 1:
            raise ValueError(
                f"IdentityFusion takes exactly one modality, got {len(dims)}: {sorted(dims)}; "
                "use a multimodal fusion (concat, gated, cross_attention, bottleneck, perceiver)"
            )
        self.input_dims = dims
        (self.modality, self.output_dim), = dims.items()

    def forward(self, inputs: dict[str, EncoderOutput]) -> EncoderOutput:
        """Return ``inputs[modality]`` after checking names and dims."""
        if len(inputs) > 1:
            raise ValueError(
                f"IdentityFusion takes exactly one modality ({self.modality!r}), "
                f"got {len(inputs)}: {sorted(inputs)}"
            )
        check_inputs(inputs, self.input_dims, owner=type(self).__name__)
        return inputs[self.modality]
