"""Whole vision-language models (model=vlm): tiny LLaVA and Qwen2-VL folders written by transformers,
their own processors and chat templates, classification at the answer token, pairs in both orders,
instruction tuning, LoRA with the projector trained in full, exports that transformers and peft load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _fit import fit_steps

from mmtrain.components.paths import resolve_pretrained_path
from mmtrain.models.vlm import VLMModel, build_vlm_model
from mmtrain.models.vlm_processing import VLMProcessor, build_vlm_processor

FAMILIES = ["builtin:tiny-llava", "builtin:tiny-qwen2-vl"]
LABELS = ["First", "Second", "Similar"]
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(n)]


def make(path: str, prompt: dict, *, lora: dict | None = None, head: dict | None = None, labels=LABELS, seed=0):
    processor = build_vlm_processor(pretrained_path=path, prompt=prompt)
    torch.manual_seed(seed)
    model = build_vlm_model(vlm={"pretrained_path": path, "config": {}}, id2label=dict(enumerate(labels)),
                            allowed_target_prefixes=["mmtrain."], head=head, lora=lora, **processor.model_facts())
    return model, processor


PAIR_PROMPT = {"template": "Which is larger? {image_1} and {image_2}", "label_answers": LABELS}


def pair_batch(processor: VLMProcessor, b: int = 3) -> dict:
    pics = images(2 * b)
    samples = [{"id": f"p{i}", "image": [pics[2 * i], pics[2 * i + 1]], "label": i % 3} for i in range(b)]
    batch = processor(samples)
    return {k: v for k, v in batch.items() if k not in ("ids", "skipped")}


#: experiment=vlm_pairwise's prompt: no chat turns, the answer read right after the two adjacent images
ADJACENT = {"template": "Which is larger? {image_1}{image_2}", "chat": False, "label_answers": LABELS}


@pytest.mark.parametrize("prompt", [PAIR_PROMPT, ADJACENT], ids=["chat", "adjacent"])
@pytest.mark.parametrize("path", FAMILIES)
def test_pairs_classify_at_the_answer_token_in_both_orders_and_train(path: str, prompt: dict) -> None:
    model, processor = make(path, prompt)
    batch = pair_batch(processor)
    image_token = processor.prompt_builder.image_token_id
    assert model.config.image_token_id == image_token
    assert int((batch["lm_input_ids"] == image_token).sum()) > 2 * 3  # each image expanded to its features
    assert batch["image_counts"].tolist() == [2, 2, 2]
    model.eval()
    out = model(**batch)
    assert tuple(out.logits.shape) == (3, 3)
    ab, ba = model.compare_both_orders(**batch)
    assert torch.allclose(ab, out.logits, atol=1e-5)
    samples = [{"id": "s", "image": [im_b, im_a], "label": 0} for im_a, im_b in [tuple(images(2))]]
    swapped_alone = model(**{k: v for k, v in processor(samples).items() if k not in ("ids", "skipped")}).logits
    assert torch.allclose(ba[0], swapped_alone[0], atol=1e-4)  # swapping in the model = giving them swapped
    model.train()
    first, last = fit_steps(model, batch, 12)
    assert last < 0.5 * first


@pytest.mark.parametrize("path", FAMILIES)
def test_instruction_tuning_masks_all_but_the_answer_and_generates(path: str) -> None:
    model, processor = make(path, {"template": "{image}{text}", "max_length": 200})
    builder = processor.prompt_builder
    pics = images(2)
    samples = [{"id": "a", "image": pics[0], "text": "Which digit?", "target_text": "seven"},
               {"id": "b", "image": pics[1], "text": "Is it even?", "target_text": "no"}]
    batch = {k: v for k, v in processor(samples).items() if k not in ("ids", "skipped", "target_texts")}
    scored = batch["lm_labels"] != -100
    for row, sample in enumerate(samples):  # the labels are exactly the answer + eos
        assert batch["lm_labels"][row][scored[row]].tolist() == builder.answer_ids(sample)
        assert builder.answer_ids(sample)[-1] == processor.tokenizer.eos_token_id
    text = builder.render(samples[0])  # through the family's own chat template
    assert ("ASSISTANT:" in text) if "llava" in path else text.endswith("<|im_start|>assistant\n")
    model.train()
    first, last = fit_steps(model, batch, 30)
    assert last < 0.5 * first
    model.eval()
    prompt = {k: v for k, v in batch.items() if k not in ("lm_labels", "lm_input_ids", "lm_attention_mask")}
    eos, pad = processor.tokenizer.eos_token_id, processor.tokenizer.pad_token_id
    answers = model.generate_answers(**prompt, max_new_tokens=3, eos_token_id=eos, pad_token_id=pad)
    assert answers.shape[0] == 2 and 1 <= answers.shape[1] <= 3
    # a candidate's score is minus its summed NLL as the forward pass computes it
    scores = model.score_answers(**prompt, candidates=[builder.answer_ids(samples[0]), builder.answer_ids(samples[1])])
    with torch.no_grad():
        nll = model(**batch).lm_nll_sum
    assert torch.allclose(scores[0, 0] + scores[1, 1], -nll, atol=1e-3)


def test_lora_trains_adapters_and_the_projector_and_exports_load_without_mmtrain(tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mmtrain.engine.export import write_export

    path = "builtin:tiny-llava"
    model, processor = make(path, PAIR_PROMPT, lora=LORA)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "multi_modal_projector.modules_to_save" in n for n in trainable)
    assert any("language_model" in n and "lora_A" in n for n in trainable)
    assert not any("vision_tower" in n for n in trainable)  # lora.vision: false
    batch = pair_batch(processor)
    fit_steps(model, batch, 3, lr=5e-3)
    batch.pop("labels")
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    export = write_export(model, processor, tmp_path / "export", config_yaml="name: test\n")
    again = VLMModel.from_pretrained(export)  # the mmtrain export: config + hf/ + the weights outside it
    with torch.no_grad():
        assert torch.allclose(again(**batch).logits, expected, atol=1e-4)
    plain = AutoModelForImageTextToText.from_pretrained(export / "hf").eval()  # transformers alone
    assert type(plain).__name__ == "LlavaForConditionalGeneration"
    assert type(AutoProcessor.from_pretrained(export / "hf")).__name__ == "LlavaProcessor"
    ids, mask = batch["lm_input_ids"], batch["lm_attention_mask"]
    with torch.no_grad():
        logits = plain(input_ids=ids, attention_mask=mask, pixel_values=batch["pixel_values"]).logits
    last = mask.sum(1) - 1
    ours = logits[torch.arange(3), last][:, model.config.answer_token_ids]
    assert torch.allclose(ours, expected, atol=1e-4)
    adapter = export / "adapter"  # peft's files on the base VLM, the projector saved in full with them
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(resolve_pretrained_path(path).resolve())
    base = AutoModelForImageTextToText.from_pretrained(resolve_pretrained_path(path))
    with_adapter = PeftModel.from_pretrained(base, adapter).eval()
    with torch.no_grad():
        logits = with_adapter(input_ids=ids, attention_mask=mask, pixel_values=batch["pixel_values"]).logits
    assert torch.allclose(logits[torch.arange(3), last][:, model.config.answer_token_ids], expected, atol=1e-4)


def test_a_head_at_a_class_token_classifies_and_its_row_trains_under_lora() -> None:
    head = {"_target_": "mmtrain.components.heads.classification.LinearClassifier"}
    prompt = {"template": "{image_1} vs {image_2}", "class_token": "<CLS>"}
    model, processor = make("builtin:tiny-llava", prompt, lora=LORA, head=head)
    cls = processor.prompt_builder.class_token_id
    assert model.config.class_token_id == cls and model.config.vocab_size == len(processor.tokenizer)
    batch = pair_batch(processor)
    assert (batch["lm_input_ids"] == cls).sum(dim=1).tolist() == [1, 1, 1]  # written after each prompt
    rows = model.vlm.get_input_embeddings().token_adapter.token_indices["default"]
    assert rows == [cls]  # the new token's row trains beside the adapters
    before = model.vlm.get_input_embeddings().token_adapter.trainable_tokens_delta["default"].detach().clone()
    first, last = fit_steps(model, batch, 15)
    assert last < 0.5 * first and model(**batch).logits.shape == (3, 3)
    assert not torch.equal(before, model.vlm.get_input_embeddings().token_adapter.trainable_tokens_delta["default"])


def test_qlora_4bit_quantizes_only_the_language_model_and_trains() -> None:
    import bitsandbytes as bnb

    model, processor = make("builtin:tiny-llava", PAIR_PROMPT, lora={**LORA, "quantize": "4bit"})
    quantized = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and all(".language_model." in n for n in quantized)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.vlm.model.vision_tower.modules())
    first, last = fit_steps(model, pair_batch(processor), 10, lr=5e-3)
    assert last < first


def test_bad_input_is_named_before_training(tmp_path: Path) -> None:
    folder = resolve_pretrained_path("builtin:tiny-llava")
    weights_only = tmp_path / "weights_only"
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        (weights_only / name).symlink_to(folder / name)
    with pytest.raises(FileNotFoundError, match=r"data.processor.pretrained_path: .*weights_only holds no processor"):
        build_vlm_processor(pretrained_path=str(weights_only), prompt=PAIR_PROMPT)
    no_image = tmp_path / "no_image_template"
    no_image.mkdir()
    for file in folder.iterdir():
        if file.name != "chat_template.jinja":
            (no_image / file.name).symlink_to(file)
    (no_image / "chat_template.jinja").write_text(
        "{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
        "{% endfor %}{% endfor %}")
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    for file in folder.iterdir():
        if file.name != "config.json":
            (no_config / file.name).symlink_to(file)
    with pytest.raises(FileNotFoundError, match=r"data.processor.pretrained_path: .*no_config has no config.json"):
        build_vlm_processor(pretrained_path=str(no_config), prompt=PAIR_PROMPT)
    with pytest.raises(FileNotFoundError, match=r"model.vlm.pretrained_path: .*no_config has no config.json"):
        build_vlm_model(vlm={"pretrained_path": str(no_config)}, id2label=dict(enumerate(LABELS)),
                        allowed_target_prefixes=[], vocab_size=10, image_token_id=1)
    with pytest.raises(ValueError, match=r"chat template writes no image token \('<image>'\)"):
        build_vlm_processor(pretrained_path=str(no_image), prompt={"template": "{image}{text}"})
    processor = build_vlm_processor(pretrained_path="builtin:tiny-llava", prompt=PAIR_PROMPT)
    with pytest.raises(ValueError, match=r"sample 'three' holds 3 image\(s\), but the prompt template "
                                         r"\(data.processor.prompt.template\) has 2 slot\(s\)"):
        processor([{"id": "three", "image": images(3), "label": 0}])
    with pytest.raises(ValueError, match=r"fields \{audio\} have no input"):
        build_vlm_processor(pretrained_path="builtin:tiny-llava", prompt={"template": "{audio}{image}"})
    with pytest.raises(ValueError, match=r"data.processor: \['imag_size'\] are not settings"):
        build_vlm_processor(pretrained_path="builtin:tiny-llava", prompt=PAIR_PROMPT, imag_size=3)
    with pytest.raises(ValueError, match=r"model.encoders \['image'\]: a whole VLM"):
        build_vlm_model(vlm={"pretrained_path": "builtin:tiny-llava"}, id2label={0: "a"}, allowed_target_prefixes=[],
                        vocab_size=10, image_token_id=1, encoders={"image": {}})
