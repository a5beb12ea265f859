"""Video as a sequence of frames: a per-frame image encoder plus temporal pooling."""

from __future__ import annotations

import torch
from torch import nn

from mmtrain.components.encoders.base import EncoderOutput, masked_mean

TEMPORAL_MODES = ("mean", "attention")


def video_frame_mask(video: torch.Tensor, video_attention_mask: torch.Tensor | None) -> torch.Tensor:
    """``[B, T]`` bool frame mask for ``video`` ``[B, T, C, H, W]`` (``None`` = all frames real)."""
    if video.dim() != 5:
        raise ValueError(f"expected pixel_values_videos [B, T, C, H, W]; got shape {tuple(video.shape)}")
    if video_attention_mask is None:
        return torch.ones(video.shape[:2], dtype=torch.bool, device=video.device)
    if tuple(video_attention_mask.shape) != tuple(video.shape[:2]):
        raise ValueError(
            f"video_attention_mask shape {tuple(video_attention_mask.shape)} does not match "
            f"pixel_values_videos [B, T] = {tuple(video.shape[:2])}"
        )
    return video_attention_mask.to(device=video.device).bool()


class TemporalTransformer(nn.Module):
    """Small transformer encoder over per-frame vectors with learned temporal positions.

    Padded frames are excluded as attention keys, so they never change real frames' outputs.
    A sample with no real frame gets all-zero outputs (no NaN).

    Args:
        dim: ``D`` (frame vector width).
        num_layers: transformer layers.
        num_heads: attention heads (must divide ``dim``).
        max_frames: number of learned temporal positions (longest clip, in frames).
        dropout: dropout inside the transformer layers.
    """

    def __init__(self, *, dim: int, num_layers: int, num_heads: int, max_frames: int, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"temporal attention: num_heads={num_heads} must divide the frame width {dim}")
        self.positions = nn.Parameter(torch.zeros(max_frames, dim))
        nn.init.normal_(self.positions, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=dim,
            nhead=num_heads,
            dim_feedforward=2 * dim,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.layers = nn.TransformerEncoder(layer, num_layers=num_layers, enable_nested_tensor=False)
        self.max_frames = int(max_frames)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``frames`` ``[B, T, D]``, ``mask`` ``[B, T]`` bool -> ``[B, T, D]`` (zero at padding)."""
        length = frames.shape[1]
        if length > self.max_frames:
            raise ValueError(
                f"clip has {length} frames but temporal attention was built for max_frames={self.max_frames}"
            )
        x = frames + self.positions[:length].unsqueeze(0)
        # A row with no real frame would make every attention score -inf (NaN softmax): let such
        # rows attend to their first position; their outputs are zeroed below anyway.
        key_padding = ~mask
        key_padding[:, 0] &= mask.any(dim=1)
        x = self.layers(x, src_key_padding_mask=key_padding)
        return x.masked_fill(~mask.unsqueeze(-1), 0.0)


class FrameEncoder(nn.Module):
    """Frame-wise image encoder + temporal pooling over ``pixel_values_videos``.

    Every real frame goes through ``frame_encoder`` (any mmtrain image encoder, e.g.
    :class:`~mmtrain.components.encoders.hf_image.HFImageEncoder`) as an image; its ``pooled`` vector is the
    frame's feature. Padded frames (``video_attention_mask`` 0) are not encoded at all. Then:

    - ``temporal="mean"``: tokens = the frame vectors; pooled = their masked mean.
    - ``temporal="attention"``: tokens = a small transformer over the frame vectors (learned temporal
      positions, key padding mask); pooled = masked mean of its outputs.

    Either way extra padded frames leave real frames' tokens and the pooled vector unchanged.

    Args:
        frame_encoder: built image encoder with ``output_dim`` and
            ``forward(pixel_values [N, C, H, W]) -> EncoderOutput``.
        temporal: ``"mean"`` or ``"attention"``.
        num_layers: temporal transformer layers (attention only).
        num_heads: temporal transformer heads (attention only; must divide the frame width).
        max_frames: longest clip in frames (attention only; size of the temporal position table).
        dropout: temporal transformer dropout (attention only).
        output_dim: if set, a linear projection of tokens and pooled vector to this width.
    """

    def __init__(
        self,
        *,
        frame_encoder: nn.Module,
        temporal: str = "mean",
        num_layers: int = 1,
        num_heads: int = 2,
        max_frames: int = 64,
        dropout: float = 0.0,
        output_dim: int | None = None,
    ) -> None:
        super().__init__()
        if temporal not in TEMPORAL_MODES:
            raise ValueError(f"FrameEncoder: temporal must be one of {TEMPORAL_MODES}; got {temporal!r}")
        frame_dim = int(frame_encoder.output_dim)
        self.frame_encoder = frame_encoder
        self.temporal = temporal
        self.temporal_model: nn.Module | None = (
            TemporalTransformer(
                dim=frame_dim, num_layers=num_layers, num_heads=num_heads, max_frames=max_frames, dropout=dropout
            )
            if temporal == "attention"
            else None
        )
        self.proj: nn.Module = nn.Linear(frame_dim, output_dim) if output_dim else nn.Identity()
        self.frame_dim = frame_dim
        self.output_dim = int(output_dim) if output_dim else frame_dim

    def encode_frames(self, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-frame vectors ``[B, T, D_frame]`` for ``video`` ``[B, T, C, H, W]``; zero at padding."""
        batch, length = video.shape[:2]
        frames = torch.zeros(batch, length, self.frame_dim, dtype=video.dtype, device=video.device)
        if mask.any():
            real = self.frame_encoder(pixel_values=video[mask]).pooled  # [N_real, D_frame]
            frames = frames.masked_scatter(mask.unsqueeze(-1), real.to(frames.dtype))
        return frames

    def forward(
        self, pixel_values_videos: torch.Tensor, video_attention_mask: torch.Tensor | None = None
    ) -> EncoderOutput:
        """Encode clips.

        Args:
            pixel_values_videos: ``[B, T, C, H, W]`` float.
            video_attention_mask: ``[B, T]`` (1 / True = real frame); ``None`` = all real.

        Returns:
            ``EncoderOutput`` with tokens ``[B, T, D]`` (zero at padded frames), mask ``[B, T]``,
            pooled ``[B, D]``.
        """
        mask = video_frame_mask(pixel_values_videos, video_attention_mask)
        tokens = self.encode_frames(pixel_values_videos, mask)
        if self.temporal_model is not None:
            tokens = self.temporal_model(tokens, mask)
        tokens = self.proj(tokens).masked_fill(~mask.unsqueeze(-1), 0.0)
        return EncoderOutput(tokens=tokens, mask=mask, pooled=masked_mean(tokens, mask))
