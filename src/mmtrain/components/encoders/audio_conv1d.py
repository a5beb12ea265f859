"""1-D conv audio encoder over log-mel features (Whisper feature-extractor layout)."""

from __future__ import annotations

import torch
from torch import nn

from mmtrain.components.encoders.base import EncoderOutput
from mmtrain.components.encoders.conv1d import Conv1DEncoder


class AudioConv1DEncoder(nn.Module):
    """:class:`~mmtrain.components.encoders.conv1d.Conv1DEncoder` over log-mel ``input_features`` ``[B, F, T]``.

    One token per log-mel frame. Padded frames (``audio_attention_mask`` 0) are zeroed before every
    conv layer, so extra padding never changes real frames' tokens or the pooled vector.

    Args:
        num_mel_bins: ``F``, mel bins per frame (the data processor's ``num_mel_bins``).
        hidden_dim: ``H``, conv width and ``output_dim``.
        num_layers: number of conv blocks.
        kernel_size: temporal kernel size.
        dropout: dropout after each conv activation.
    """

    def __init__(
        self,
        *,
        num_mel_bins: int,
        hidden_dim: int = 32,
        num_layers: int = 2,
        kernel_size: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv = Conv1DEncoder(
            in_features=num_mel_bins,
            hidden_dim=hidden_dim,
            num_layers=num_layers,
            kernel_size=kernel_size,
            dropout=dropout,
        )
        self.num_mel_bins = int(num_mel_bins)
        self.output_dim = self.conv.output_dim

    def forward(
        self, input_features: torch.Tensor, audio_attention_mask: torch.Tensor | None = None
    ) -> EncoderOutput:
        """Encode log-mel features.

        Args:
            input_features: ``[B, F, T]`` float log-mel.
            audio_attention_mask: ``[B, T]`` frame-level (1 / True = real frame); ``None`` = all real.

        Returns:
            ``EncoderOutput`` with tokens ``[B, T, H]``, mask ``[B, T]``, pooled ``[B, H]``.
        """
        if input_features.dim() != 3 or input_features.shape[1] != self.num_mel_bins:
            raise ValueError(
                f"AudioConv1DEncoder expects input_features [B, {self.num_mel_bins}, T] (log-mel); "
                f"got shape {tuple(input_features.shape)}"
            )
        if audio_attention_mask is not None and audio_attention_mask.shape[-1] != input_features.shape[-1]:
            raise ValueError(
                f"audio_attention_mask has {audio_attention_mask.shape[-1]} frames, input_features "
                f"{input_features.shape[-1]}; AudioConv1DEncoder needs a frame-level mask"
            )
        return self.conv(input_features.transpose(1, 2), audio_attention_mask)
