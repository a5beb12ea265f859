"""Instruction prompts: answer appended with eos, -100 on prompt/media/padding, left-padded prompts."""

from __future__ import annotations

import pytest
import torch

from mmtrain.components.lm.prompt import PromptBuilder, pad_rows
from mmtrain.components.lm.tokenizers import builtin_tokenizer

TEMPLATE = "<IMAGE>{image}</IMAGE> Q: {text} A:"


@pytest.fixture()
def builder() -> PromptBuilder:
    return PromptBuilder(builtin_tokenizer("gpt2"), template=TEMPLATE, media_tokens={"image": 3}, max_length=32)


def test_labels_hold_the_answer_and_eos_only(builder: PromptBuilder) -> None:
    tok = builder.tokenizer
    samples = [{"id": "a", "image": True, "text": "Which digit is shown?", "target_text": "seven"},
               {"id": "b", "image": None, "text": "Is it odd?", "target_text": "yes it is"}]
    out = builder(samples)
    ids, labels, mask = out["lm_input_ids"], out["lm_labels"], out["lm_attention_mask"]
    assert ids.shape == labels.shape == mask.shape and out["target_texts"] == ["seven", "yes it is"]
    for row, sample in enumerate(samples):
        answer = tok(" " + sample["target_text"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        kept = labels[row][labels[row] != -100].tolist()
        assert kept == answer
        # the answer sits right after the prompt, and the prompt itself is the rendered template
        prompt = tok(builder.render(sample), add_special_tokens=False)["input_ids"]
        assert ids[row, : len(prompt)].tolist() == prompt
        assert ids[row, len(prompt) : len(prompt) + len(answer)].tolist() == answer
        assert int(mask[row].sum()) == len(prompt) + len(answer)
    image_pad = tok.convert_tokens_to_ids("<IMAGE_PAD>")
    assert int((ids[0] == image_pad).sum()) == 3 and int((ids[1] == image_pad).sum()) == 0
    assert bool((labels[ids == image_pad] == -100).all())
    assert bool((labels[mask == 0] == -100).all())


def test_prompts_for_generation_are_left_padded(builder: PromptBuilder) -> None:
    samples = [{"id": "a", "image": True, "text": "Which digit is shown?", "target_text": "seven"},
               {"id": "b", "image": True, "text": "Odd?", "target_text": "no"}]
    out = builder(samples)
    prompts, pmask = out["lm_prompt_ids"], out["lm_prompt_mask"]
    for row, sample in enumerate(samples):
        prompt = builder.prompt_ids(sample)
        assert prompts[row, -len(prompt):].tolist() == prompt and int(pmask[row].sum()) == len(prompt)
        assert bool((pmask[row, : prompts.shape[1] - len(prompt)] == 0).all())


def test_without_answers_there_are_no_labels(builder: PromptBuilder) -> None:
    out = builder([{"id": "a", "image": True, "text": "hi"}])
    assert set(out) == {"lm_input_ids", "lm_attention_mask", "lm_prompt_ids", "lm_prompt_mask"}  # no labels
    assert torch.equal(out["lm_prompt_ids"], out["lm_input_ids"])  # one sample, no answer: the prompt itself


def test_the_answer_counts_against_the_budget_and_is_never_cut() -> None:
    tok = builtin_tokenizer("gpt2")
    builder = PromptBuilder(tok, template=TEMPLATE, media_tokens={"image": 3}, max_length=16, overflow="truncate_text")
    long_text = "one two three four five six seven eight nine ten"
    sample = {"id": "long", "image": True, "text": long_text, "target_text": "seven"}
    assert builder.lengths([sample])[0] > 16
    out = builder([sample])
    assert out["lm_input_ids"].shape[1] <= 16
    kept = out["lm_labels"][0][out["lm_labels"][0] != -100].tolist()
    assert kept == tok(" seven", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    strict = PromptBuilder(tok, template=TEMPLATE, media_tokens={"image": 3}, max_length=16)
    with pytest.raises(ValueError, match=r"sample 'long': the prompt takes \d+ tokens \+ \d+ of answer, over the budget of 16"):
        strict([sample])


def test_pad_rows_right_and_left() -> None:
    ids, mask = pad_rows([[1, 2, 3], [4]], 0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_rows([[1, 2, 3], [4]], 9, left=True)
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ids.dtype == torch.long
