"""Several images in one LLM prompt ({image_1}, {image_2}) and classification at the answer token."""

from __future__ import annotations

import pytest
import torch
from _fit import fit_steps
from transformers import AutoTokenizer

import mmtrain.models  # noqa: F401
from mmtrain.components.lm.prompt import PromptBuilder, placeholder, template_slots
from mmtrain.components.paths import resolve_pretrained_path
from mmtrain.models.llm import build_llm_model

VIT = {"_target_": "mmtrain.components.encoders.hf_image.HFImageEncoder", "model_type": "vit",
       "config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                  "image_size": 16, "patch_size": 8}}
GPT2 = {"_target_": "mmtrain.components.lm.decoder.CausalLMDecoder", "model_type": "gpt2",
        "config": {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64}}
PROJECTOR = {"_target_": "mmtrain.components.lm.projectors.TokenProjector", "num_tokens": 2}
TEMPLATE = "First:{image_1} Second:{image_2} Which is larger? Answer:"
LABELS = ["First", "Second", "Similar"]


def gpt2_tokenizer():
    return AutoTokenizer.from_pretrained(str(resolve_pretrained_path("builtin:gpt2")))


def make(seed: int = 0):
    tok = gpt2_tokenizer()
    prompt = PromptBuilder(tok, template=TEMPLATE, media_tokens={"image": 2}, label_answers=LABELS, max_length=32)
    torch.manual_seed(seed)
    model = build_llm_model(
        encoders={"image": VIT}, projector=PROJECTOR, decoder=GPT2, head=None, id2label=dict(enumerate(LABELS)),
        allowed_target_prefixes=["mmtrain."], lm_vocab_size=len(tok), media_token_ids=prompt.media_token_ids,
        answer_token_ids=prompt.answer_token_ids,
    )
    return model, prompt


def pair_batch(prompt: PromptBuilder, b: int = 3) -> dict:
    samples = [{"id": f"p{i}", "image": [object(), object()]} for i in range(b)]
    torch.manual_seed(3)
    return {**prompt(samples), "pixel_values": torch.randn(b, 2, 3, 16, 16), "image_present": torch.ones(b, dtype=torch.bool)}


def test_numbered_fields_are_checked_when_the_template_is_read() -> None:
    assert template_slots("{image_1} vs {image_2}: {text}") == {"image": 2}
    assert template_slots("{image} {audio}") == {"image": 0, "audio": 0}
    for bad, said in [("{image_2} {image_1}", "in that order"), ("{image} {image_1}", "one form"),
                      ("{image_1} {image_3}", "in that order"), ("{picture}", "unknown"), ("{text_1}", "unknown")]:
        with pytest.raises(ValueError, match=said):
            template_slots(bad)


def test_each_numbered_field_gets_one_block_of_placeholders() -> None:
    tok = gpt2_tokenizer()
    prompt = PromptBuilder(tok, template=TEMPLATE, media_tokens={"image": 3})
    text = prompt.render({"id": "x", "image": [1, 2]})
    assert text == f"First:{placeholder('image') * 3} Second:{placeholder('image') * 3} Which is larger? Answer:"
    assert prompt.render({"id": "y", "image": None}) == "First: Second: Which is larger? Answer:"


@pytest.mark.parametrize("images, said", [([1, 2, 3], "holds 3 image item"), ([1], "holds 1 image item")])
def test_a_sample_with_more_or_fewer_items_than_slots_is_named(images, said) -> None:
    prompt = PromptBuilder(gpt2_tokenizer(), template=TEMPLATE, media_tokens={"image": 2})
    with pytest.raises(ValueError, match=rf"sample .bad. {said}.*prompt.template.*2 slots \{{image_1\}}..\{{image_2\}}"):
        prompt([{"id": "bad", "image": images}])


def test_a_list_of_items_in_a_single_field_template_is_named() -> None:
    prompt = PromptBuilder(gpt2_tokenizer(), template="{image} Answer:", media_tokens={"image": 2})
    with pytest.raises(ValueError, match=r"sample 'two' holds a list of 2 image items.*\{image_1\}..\{image_2\}"):
        prompt([{"id": "two", "image": [1, 2]}])


def test_label_answers_must_start_with_different_tokens() -> None:
    with pytest.raises(ValueError, match=r"label_answers \['left image', 'left side'\] start with the same token"):
        PromptBuilder(gpt2_tokenizer(), template="{image}", media_tokens={"image": 1},
                      label_answers=["left image", "left side", "both"])


def test_item_i_pseudo_tokens_fill_the_i_th_block() -> None:
    model, prompt = make()
    b = pair_batch(prompt)
    tokens = model.pseudo_tokens(b)["image"]  # [B, K, M, E]
    assert tuple(tokens.shape) == (3, 2, 2, 32)
    one = model.projector["image"](model.encode_one("image", pixel_values=b["pixel_values"][:, 1],
                                                    image_present=b["image_present"]))
    assert torch.allclose(tokens[:, 1], one, atol=1e-6)  # item 2 encoded alone gives the same tokens
    embeds = model.inputs_embeds(b["lm_input_ids"], {"image": tokens})
    at = (b["lm_input_ids"] == prompt.media_token_ids["image"]).nonzero()
    rows = embeds[at[:, 0], at[:, 1]].reshape(3, 2, 2, 32)  # blocks in prompt order
    assert torch.allclose(rows, tokens, atol=1e-6)


def test_answer_token_logits_are_the_lm_heads_rows_at_the_last_prompt_position() -> None:
    model, prompt = make()
    b = pair_batch(prompt)
    model.eval()
    out = model(**b)
    assert tuple(out.logits.shape) == (3, 3)
    full = model.decoder.lm.get_output_embeddings()(out.hidden[:, -1])  # prompts share one length here
    assert torch.allclose(out.logits, full[:, prompt.answer_token_ids], atol=1e-5)
    assert prompt.answer_token_ids == [gpt2_tokenizer()(" " + n)["input_ids"][0] for n in LABELS]


def test_both_orders_swap_the_items_and_training_moves_the_answer_logits() -> None:
    model, prompt = make()
    b = pair_batch(prompt)
    model.eval()
    ab, ba = model.compare_both_orders(**b)
    swapped = {**b, "pixel_values": b["pixel_values"].flip(1)}
    assert torch.allclose(ba, model(**swapped).logits, atol=1e-5)
    assert not torch.allclose(ab, ba)
    model.train()
    first, last = fit_steps(model, {**b, "labels": torch.tensor([0, 1, 2])}, 15)
    assert last < 0.5 * first


def test_a_head_and_label_answers_together_are_refused() -> None:
    tok = gpt2_tokenizer()
    prompt = PromptBuilder(tok, template=TEMPLATE + "<CLS>", media_tokens={"image": 2}, class_token="<CLS>",
                           label_answers=LABELS)
    with pytest.raises(ValueError, match="choose one"):
        build_llm_model(encoders={"image": VIT}, projector=PROJECTOR, decoder=GPT2,
                        head={"_target_": "mmtrain.components.heads.classification.LinearClassifier"},
                        id2label=dict(enumerate(LABELS)), allowed_target_prefixes=["mmtrain."], lm_vocab_size=len(tok),
                        media_token_ids=prompt.media_token_ids, class_token_id=prompt.class_token_id,
                        answer_token_ids=prompt.answer_token_ids)
