"""Cheap video encoder: per-frame pooled pixels, projected, then a 1-D conv over time."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mmtrain.components.encoders.base import EncoderOutput
from mmtrain.components.encoders.conv1d import Conv1DEncoder
from mmtrain.components.encoders.video_frames import video_frame_mask


class VideoConv1DEncoder(nn.Module):
    """Each frame is average-pooled to a ``grid_size x grid_size`` grid, flattened
    (``C * grid_size**2`` values) and fed as one time step to a
    :class:`~mmtrain.components.encoders.conv1d.Conv1DEncoder` (its input projection maps it to ``H``).

    Frames are pooled independently and the conv stack zeroes padded frames before every layer,
    so padded frames (``video_attention_mask`` 0) never change real frames' tokens or the pooled
    vector. Works for any frame size (adaptive pooling).

    Args:
        in_channels: ``C`` (3 for RGB).
        grid_size: side of the pooled grid per frame.
        hidden_dim: ``H``, conv width and ``output_dim``.
        num_layers: number of conv blocks.
        kernel_size: temporal kernel size.
        dropout: dropout after each conv activation.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        grid_size: int = 4,
        hidden_dim: int = 32,
        num_layers: int = 2,
        kernel_size: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.grid_size = int(grid_size)
        self.conv = Conv1DEncoder(
            in_features=self.in_channels * self.grid_size**2,
            hidden_dim=hidden_dim,
            num_layers=num_layers,
            kernel_size=kernel_size,
            dropout=dropout,
        )
        self.output_dim = self.conv.output_dim

    def forward(
        self, pixel_values_videos: torch.Tensor, video_attention_mask: torch.Tensor | None = None
    ) -> EncoderOutput:
        """Encode clips.

        Args:
            pixel_values_videos: ``[B, T, C, H, W]`` float.
            video_attention_mask: ``[B, T]`` (1 / True = real frame); ``None`` = all real.

        Returns:
            ``EncoderOutput`` with tokens ``[B, T, H]``, mask ``[B, T]``, pooled ``[B, H]``.
        """
        mask = video_frame_mask(pixel_values_videos, video_attention_mask)
        batch, length, channels = pixel_values_videos.shape[:3]
        if channels != self.in_channels:
            raise ValueError(f"VideoConv1DEncoder expects {self.in_channels} channels; got {channels}")
        frames = pixel_values_videos.flatten(0, 1)  # [B*T, C, H, W]
        grid = F.adaptive_avg_pool2d(frames, self.grid_size)  # [B*T, C, g, g]
        features = grid.reshape(batch, length, -1)  # [B, T, C*g*g]
        return self.conv(features, mask)
