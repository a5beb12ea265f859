"""Hugging Face vision towers (CLIP vision, ViT, SigLIP vision) as mmtrain image encoders."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mmtrain.components.encoders.base import EncoderOutput, full_mask, masked_mean
from mmtrain.components.encoders.hf_tower import HFTower, build_hf_config, build_hf_model, resolve_pretrained_path

# model_type -> (transformers class name, extra constructor kwargs)
IMAGE_TOWERS: dict[str, tuple[str, dict[str, Any]]] = {
    "clip_vision_model": ("CLIPVisionModel", {}),
    "vit": ("ViTModel", {"add_pooling_layer": True}),
    "siglip_vision_model": ("SiglipVisionModel", {}),
}


class HFImageEncoder(HFTower):
    """A Hugging Face vision transformer over ``pixel_values``.

    ``tokens`` is the tower's last hidden state (patch tokens, plus the CLS token first for CLIP and
    ViT; SigLIP has none). ``pooled`` is the tower's own pooler output (CLIP: post-layer-normed CLS;
    ViT: tanh-dense CLS pooler; SigLIP: attention-pooling head), projected like the tokens. All
    tokens are real, so ``mask`` is all ``True``.

    Args:
        model_type: ``"clip_vision_model"``, ``"vit"`` or ``"siglip_vision_model"``.
        config: HF config kwargs or a full ``to_dict()`` output (a composite ``"clip"`` /
            ``"siglip"`` dict contributes its ``vision_config``); see :mod:`mmtrain.components.encoders.hf_tower`.
        pretrained_path: local ``save_pretrained`` folder (or ``"pkg:..."``); a full CLIP / SigLIP
            checkpoint also works (its text tower is skipped).
        output_dim: if set, a linear projection of tokens and pooled vector to this width.
    """

    def __init__(
        self,
        *,
        model_type: str,
        config: Mapping[str, Any] | None = None,
        pretrained_path: str | None = None,
        output_dim: int | None = None,
    ) -> None:
        if model_type not in IMAGE_TOWERS:
            raise ValueError(
                f"HFImageEncoder: unsupported model_type {model_type!r}; use one of {sorted(IMAGE_TOWERS)}"
            )
        import transformers

        class_name, model_kwargs = IMAGE_TOWERS[model_type]
        folder = resolve_pretrained_path(pretrained_path)
        hf_config = build_hf_config(model_type, config, folder)
        model = build_hf_model(getattr(transformers, class_name), hf_config, folder, **model_kwargs)
        super().__init__(model, hf_config.hidden_size, output_dim)
        self.model_type = model_type
        self.num_channels = int(hf_config.num_channels)
        self.image_size = int(hf_config.image_size)

    def forward(self, pixel_values: torch.Tensor) -> EncoderOutput:
        """Encode images.

        Args:
            pixel_values: ``[B, C, H, W]`` float (C = ``config.num_channels``, H = W =
                ``config.image_size``).

        Returns:
            ``EncoderOutput`` with tokens ``[B, N, D]`` (N = patches [+1 CLS]), mask ``[B, N]`` all
            ``True``, pooled ``[B, D]``.
        """
        if pixel_values.dim() != 4:
            raise ValueError(
                f"HFImageEncoder expects pixel_values [B, C, H, W]; got shape {tuple(pixel_values.shape)}"
            )
        if pixel_values.shape[1] != self.num_channels:
            raise ValueError(
                f"HFImageEncoder ({self.model_type}) expects {self.num_channels} channels; "
                f"got pixel_values of shape {tuple(pixel_values.shape)}"
            )
        out = self.model(pixel_values=pixel_values)
        tokens = out.last_hidden_state
        mask = full_mask(tokens)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            pooled = masked_mean(tokens, mask)
        return self._output(tokens, mask, pooled)

