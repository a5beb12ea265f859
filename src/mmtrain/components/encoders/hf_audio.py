"""Hugging Face audio towers (Whisper encoder, HuBERT, wav2vec2) as mmtrain audio encoders."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mmtrain.components.encoders.base import EncoderOutput, masked_mean
from mmtrain.components.encoders.hf_tower import (
    HFTower,
    build_hf_config,
    build_hf_model,
    resolve_pretrained_path,
    to_plain_dict,
)

# Load a WhisperEncoder out of a WhisperModel ("encoder.*") or WhisperForConditionalGeneration
# ("model.encoder.*") checkpoint as well as out of a saved WhisperEncoder (no prefix).
_WHISPER_KEY_MAPPING = {r"^(model\.)?encoder\.": ""}
_WAVEFORM_TOWERS = {"hubert": "HubertModel", "wav2vec2": "Wav2Vec2Model"}
AUDIO_MODEL_TYPES = ("whisper", *_WAVEFORM_TOWERS)


class HFAudioEncoder(HFTower):
    """A Hugging Face speech encoder.

    - ``whisper``: only the encoder (``WhisperEncoder``) is built, over log-mel ``input_features``
      ``[B, F, T]`` with ``T == 2 * max_source_positions`` exactly (Whisper's fixed window); tokens
      ``[B, T // 2, H]``. Whisper attends over the whole window, padding included (it was trained
      that way and has no attention mask), so padded frames *do* influence real tokens; the output
      mask (``audio_attention_mask`` downsampled with stride 2) only keeps padded positions out of
      ``pooled`` and out of whatever consumes the tokens.
    - ``hubert`` / ``wav2vec2``: over the waveform ``input_values`` ``[B, L]``; tokens
      ``[B, N, H]`` with ``N`` from the conv feature extractor. ``audio_attention_mask`` is passed to
      the model when ``config.feat_extract_norm == "layer"`` (as Hugging Face prescribes; such
      models are then padding-invariant). Models with ``"group"`` norm (e.g. wav2vec2-base) were
      trained without a mask on zero-padded audio and normalise over time, so padding changes their
      outputs; the output mask still marks the real frames.

    ``pooled`` is the masked mean of the tokens over the output mask.

    Args:
        model_type: ``"whisper"``, ``"hubert"`` or ``"wav2vec2"``.
        config: HF config kwargs or a full ``to_dict()`` output (see
            :mod:`mmtrain.components.encoders.hf_tower`).
        pretrained_path: local ``save_pretrained`` folder (or ``"pkg:..."``). For Whisper a saved
            ``WhisperEncoder``, ``WhisperModel`` or ``WhisperForConditionalGeneration`` (the decoder
            weights are skipped).
        output_dim: if set, a linear projection of tokens and pooled vector to this width.
        audio_frames: Whisper only: number of log-mel frames the data processor emits. Sets
            ``max_source_positions = audio_frames // 2`` when the config does not give it, and
            otherwise is checked against it (a clear error at build time instead of at the first
            batch). Ignored by the waveform towers.
    """

    def __init__(
        self,
        *,
        model_type: str,
        config: Mapping[str, Any] | None = None,
        pretrained_path: str | None = None,
        output_dim: int | None = None,
        audio_frames: int | None = None,
    ) -> None:
        if model_type not in AUDIO_MODEL_TYPES:
            raise ValueError(
                f"HFAudioEncoder: unsupported model_type {model_type!r}; use one of {list(AUDIO_MODEL_TYPES)}"
            )
        folder = resolve_pretrained_path(pretrained_path)
        config_dict = to_plain_dict(config)
        if model_type == "whisper" and audio_frames is not None:
            _set_whisper_window(config_dict, int(audio_frames), from_folder=folder is not None)
        hf_config = build_hf_config(model_type, config_dict, folder)
        if model_type == "whisper":
            from transformers.models.whisper.modeling_whisper import WhisperEncoder

            model = build_hf_model(WhisperEncoder, hf_config, folder, key_mapping=_WHISPER_KEY_MAPPING)
            if audio_frames is not None and 2 * hf_config.max_source_positions != audio_frames:
                raise ValueError(
                    f"whisper at {pretrained_path!r} expects {2 * hf_config.max_source_positions} log-mel "
                    f"frames (2 * max_source_positions) but audio_frames={audio_frames}"
                )
        else:
            import transformers

            model = build_hf_model(getattr(transformers, _WAVEFORM_TOWERS[model_type]), hf_config, folder)
        super().__init__(model, hf_config.hidden_size, output_dim)
        self.model_type = model_type
        #: The batch keys this encoder reads (the model routes only these; the processor is wired to them).
        self.input_names: tuple[str, ...] = (
            ("input_features", "audio_attention_mask") if model_type == "whisper"
            else ("input_values", "audio_attention_mask")
        )

    def forward(
        self,
        input_features: torch.Tensor | None = None,
        input_values: torch.Tensor | None = None,
        audio_attention_mask: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """Encode audio.

        Args:
            input_features: Whisper: log-mel ``[B, F, T]`` (F = ``num_mel_bins``,
                T = ``2 * max_source_positions``).
            input_values: HuBERT / wav2vec2: waveform ``[B, L]``.
            audio_attention_mask: ``[B, T]`` (Whisper, frame-level) or ``[B, L]`` (waveform), 1 / True
                = real; ``None`` = all real. Prefix (right-padded) masks are assumed.

        Returns:
            ``EncoderOutput`` with tokens ``[B, N, D]``, mask ``[B, N]``, pooled ``[B, D]``.
        """
        if self.model_type == "whisper":
            tokens, mask = self._whisper(input_features, audio_attention_mask)
        else:
            tokens, mask = self._waveform(input_values, audio_attention_mask)
        return self._output(tokens, mask, masked_mean(tokens, mask))

    def _whisper(
        self, input_features: torch.Tensor | None, audio_attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Whisper encoder: ``[B, F, T]`` -> tokens ``[B, T // 2, H]``, mask ``[B, T // 2]``."""
        if input_features is None:
            raise ValueError("HFAudioEncoder(whisper) needs input_features [B, F, T] (log-mel); got none")
        config = self.model.config
        expected = 2 * config.max_source_positions
        if input_features.dim() != 3 or input_features.shape[1] != config.num_mel_bins:
            raise ValueError(
                f"whisper expects input_features [B, {config.num_mel_bins}, {expected}] (log-mel); "
                f"got shape {tuple(input_features.shape)}"
            )
        if input_features.shape[-1] != expected:
            raise ValueError(
                f"whisper expects exactly {expected} log-mel frames (2 * max_source_positions = "
                f"2 * {config.max_source_positions}); got {input_features.shape[-1]}"
            )
        tokens = self.model(input_features=input_features).last_hidden_state
        if audio_attention_mask is None:
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        else:
            mask = audio_attention_mask.to(device=tokens.device).bool()[:, ::2]
        return tokens, mask

    def _waveform(
        self, input_values: torch.Tensor | None, audio_attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """HuBERT / wav2vec2: ``[B, L]`` -> tokens ``[B, N, H]``, mask ``[B, N]``."""
        if input_values is None:
            raise ValueError(f"HFAudioEncoder({self.model_type}) needs input_values [B, L] (waveform); got none")
        if input_values.dim() != 2:
            raise ValueError(
                f"{self.model_type} expects input_values [B, L] (mono waveform); "
                f"got shape {tuple(input_values.shape)}"
            )
        use_mask = audio_attention_mask is not None and self.model.config.feat_extract_norm == "layer"
        tokens = self.model(
            input_values=input_values,
            attention_mask=audio_attention_mask.long() if use_mask else None,
        ).last_hidden_state
        batch, length = tokens.shape[:2]
        if audio_attention_mask is None:
            lengths = torch.full((batch,), input_values.shape[1], device=tokens.device)
        else:
            lengths = audio_attention_mask.to(device=tokens.device).long().sum(-1)
        out_lengths = self.model._get_feat_extract_output_lengths(lengths)
        mask = torch.arange(length, device=tokens.device)[None, :] < out_lengths[:, None]
        return tokens, mask


def _set_whisper_window(config: dict[str, Any], audio_frames: int, *, from_folder: bool) -> None:
    """Set / check ``max_source_positions`` in Whisper config kwargs from the frame count ``T``."""
    if audio_frames <= 0 or audio_frames % 2:
        raise ValueError(f"whisper needs an even, positive number of log-mel frames; audio_frames={audio_frames}")
    positions = audio_frames // 2
    given = config.get("max_source_positions")
    if given is None:
        if not from_folder:
            config["max_source_positions"] = positions
    elif int(given) != positions:
        raise ValueError(
            f"whisper config max_source_positions={given} expects {2 * int(given)} log-mel frames, "
            f"but audio_frames={audio_frames}"
        )
