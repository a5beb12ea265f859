"""Pretrained loading: save_pretrained -> pretrained_path, and full config dict -> same architecture."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from mmtrain.components.encoders.base import EncoderOutput
from mmtrain.components.encoders.hf_audio import HFAudioEncoder
from mmtrain.components.encoders.hf_image import HFImageEncoder
from mmtrain.components.encoders.hf_text import HFTextEncoder
from mmtrain.components.encoders.llm_embeddings import LLMEmbeddingEncoder

from ._helpers import ATOL, build, make_case

HF_TOWERS = [
    "image/clip", "image/siglip", "image/vit", "audio/whisper", "audio/hubert", "audio/wav2vec2", "text/bert",
]  # fmt: skip


def _run(encoder: nn.Module, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
    encoder.eval()
    with torch.no_grad():
        return encoder(**inputs)


def _assert_same(a: EncoderOutput, b: EncoderOutput) -> None:
    assert torch.equal(a.mask, b.mask)
    torch.testing.assert_close(a.tokens, b.tokens, atol=ATOL, rtol=0)
    torch.testing.assert_close(a.pooled, b.pooled, atol=ATOL, rtol=0)


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name", HF_TOWERS)
def test_save_pretrained_then_load(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    first = build(name)
    first.model.save_pretrained(tmp_path)
    inputs = make_case(name).inputs
    reference = _run(first, inputs)

    loaded = build(name, config=None, pretrained_path=str(tmp_path))
    assert loaded.training  # a freshly built module, whatever from_pretrained does
    _assert_same(_run(loaded, inputs), reference)

    # What the exporter does: the folder's full config dict, no pretrained path, own weights.
    full = AutoConfig.from_pretrained(tmp_path).to_dict()
    torch.manual_seed(123)
    rebuilt = build(name, config=full, pretrained_path=None)
    assert _shapes(rebuilt) == _shapes(first)
    rebuilt.load_state_dict(first.state_dict())
    _assert_same(_run(rebuilt, inputs), reference)
    assert rebuilt.config_dict()["model_type"] == full["model_type"]


def test_whisper_encoder_from_full_whisper_checkpoint(tmp_path: Path) -> None:
    """A WhisperForConditionalGeneration folder yields its encoder; the decoder is not built."""
    from transformers import WhisperForConditionalGeneration

    torch.manual_seed(0)
    tower = build("audio/whisper")
    config = AutoConfig.for_model(**tower.config_dict())
    full = WhisperForConditionalGeneration(config).eval()
    full.save_pretrained(tmp_path)
    inputs = make_case("audio/whisper").inputs
    encoder = build("audio/whisper", config=None, pretrained_path=str(tmp_path))
    out = _run(encoder, inputs)
    with torch.no_grad():
        expected = full.get_encoder()(input_features=inputs["input_features"]).last_hidden_state
    torch.testing.assert_close(out.tokens[out.mask], expected[out.mask], atol=ATOL, rtol=0)
    assert not any("decoder" in k for k in encoder.state_dict())


def test_clip_vision_tower_from_full_clip_checkpoint(tmp_path: Path) -> None:
    """A full CLIP folder (or its composite config dict) yields the vision tower."""
    from transformers import CLIPConfig, CLIPModel

    tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={**tiny, "vocab_size": 64, "max_position_embeddings": 16},
        vision_config={**tiny, "image_size": 16, "patch_size": 8},
        projection_dim=16,
    )
    torch.manual_seed(0)
    clip = CLIPModel(config).eval()
    clip.save_pretrained(tmp_path)
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = clip.vision_model(pixel_values=pixels)
    encoder = HFImageEncoder(model_type="clip_vision_model", pretrained_path=str(tmp_path))
    out = _run(encoder, {"pixel_values": pixels})
    torch.testing.assert_close(out.tokens, expected.last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.pooled, expected.pooler_output, atol=ATOL, rtol=0)

    rebuilt = HFImageEncoder(model_type="clip_vision_model", config=AutoConfig.from_pretrained(tmp_path).to_dict())
    assert _shapes(rebuilt) == _shapes(encoder)


LLM_CONFIGS = {
    "llama": {"intermediate_size": 64},
    "qwen2": {"intermediate_size": 64, "num_key_value_heads": 2, "tie_word_embeddings": True},
    "gpt2": {"bos_token_id": 0, "eos_token_id": 0},
}


@pytest.mark.parametrize("model_type", sorted(LLM_CONFIGS))
@pytest.mark.parametrize("sharded", [False, True])
def test_llm_embeddings_load_only_the_table(model_type: str, sharded: bool, tmp_path: Path) -> None:
    config = AutoConfig.for_model(
        model_type, vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        **LLM_CONFIGS[model_type],
    )  # fmt: skip
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(config)
    lm.save_pretrained(tmp_path, max_shard_size="20KB" if sharded else "5GB")
    assert (tmp_path / "model.safetensors.index.json").is_file() == sharded

    encoder = LLMEmbeddingEncoder(model_type=model_type, pretrained_path=str(tmp_path), output_dim=16)
    assert list(encoder.state_dict()) == ["embed_tokens.weight", "proj.weight", "proj.bias"]
    assert torch.equal(encoder.embed_tokens.weight, lm.get_input_embeddings().weight)

    inputs = {
        "input_ids": torch.randint(0, 100, (2, 5)),
        "attention_mask": torch.tensor([[1] * 5, [1, 1, 0, 0, 0]]),
    }
    reference = _run(encoder, inputs)
    full = AutoConfig.from_pretrained(tmp_path).to_dict()
    rebuilt = LLMEmbeddingEncoder(model_type=model_type, config=full, output_dim=16)
    rebuilt.load_state_dict(encoder.state_dict())
    _assert_same(_run(rebuilt, inputs), reference)


def test_llm_embeddings_yaml_from_a_saved_llm(tmp_path: Path) -> None:
    """The shipped YAML's tiny config -> a whole Llama LM saved -> the YAML with pretrained_path."""
    spec = build("text/llm_embeddings").config_dict()
    lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(**spec))
    lm.save_pretrained(tmp_path)
    encoder = build("text/llm_embeddings", config=None, pretrained_path=str(tmp_path))
    assert torch.equal(encoder.embed_tokens.weight, lm.get_input_embeddings().weight)


@pytest.mark.parametrize(
    "factory",
    [
        lambda p: HFImageEncoder(model_type="vit", pretrained_path=p),
        lambda p: HFAudioEncoder(model_type="whisper", pretrained_path=p),
        lambda p: HFTextEncoder(model_type="bert", pretrained_path=p),
        lambda p: LLMEmbeddingEncoder(model_type="llama", pretrained_path=p),
    ],
    ids=["image", "audio", "text", "llm"],
)
def test_missing_pretrained_folder_names_the_path(factory, tmp_path: Path) -> None:
    missing = str(tmp_path / "no_such_checkpoint")
    with pytest.raises(FileNotFoundError, match="no_such_checkpoint"):
        factory(missing)


def test_pretrained_with_config_overrides(tmp_path: Path) -> None:
    """With both, ``config`` overrides single fields of the folder's config (e.g. dropout)."""
    build("text/bert").model.save_pretrained(tmp_path)
    encoder = build("text/bert", config={"hidden_dropout_prob": 0.3}, pretrained_path=str(tmp_path))
    assert encoder.model.config.hidden_dropout_prob == 0.3
    assert encoder.model.config.hidden_size == 32
