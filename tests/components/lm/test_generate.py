"""Greedy generation and candidate scoring on the shipped tiny decoders (GPT-2, Llama, Qwen2, TRM).

References are written out by hand without a KV cache or padding: each prompt row alone, the full
sequence re-run at every step. Models run in float64 so cached and uncached logits agree to ~1e-12
and an argmax never flips on rounding.
"""

from __future__ import annotations

from importlib.resources import files

import pytest
import torch
import yaml

import mmtrain.components.decoders  # noqa: F401  (registers "mmtrain_trm")
from mmtrain.components.lm.decoder import CausalLMDecoder
from mmtrain.components.lm.generate import (
    constrained_answer,
    greedy_generate,
    left_pad,
    score_candidates,
)

VOCAB = 64
FAMILIES = ["gpt2", "llama", "qwen2", "trm"]
PROMPTS = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 13, 14, 15, 16]]  # different lengths -> left padding
PAD = 0


pytestmark = pytest.mark.usefixtures("one_thread")


def build_decoder(name: str, vocab_size: int = VOCAB) -> CausalLMDecoder:
    """The shipped tiny decoder YAML, seeded, float64, in TRAINING mode (as built; the functions switch).

    ``initializer_range=0.3`` makes the random logits peaked enough that greedy output varies
    (with 0.02 a tied-embedding LM just repeats its last input token).
    """
    spec = yaml.safe_load((files("mmtrain.configs") / "model" / "decoder" / f"{name}.yaml").read_text())
    spec.pop("_target_")
    spec["config"] = {**spec["config"], "initializer_range": 0.3}
    torch.manual_seed(0)
    return CausalLMDecoder(**spec, vocab_size=vocab_size).double()


@pytest.fixture(scope="module", params=FAMILIES)
def decoder(request: pytest.FixtureRequest) -> CausalLMDecoder:
    return build_decoder(request.param)


@torch.no_grad()
def reference_greedy(decoder: CausalLMDecoder, prompt: list[int], steps: int, eos: int) -> list[int]:
    """No cache, no padding: re-run the whole sequence, take the argmax, stop after eos."""
    lm = decoder.lm.eval()
    sequence, new = list(prompt), []
    for _ in range(steps):
        token = int(lm(input_ids=torch.tensor([sequence]), use_cache=False).logits[0, -1].argmax())
        new.append(token)
        sequence.append(token)
        if token == eos:
            break
    decoder.lm.train()
    return new


@torch.no_grad()
def reference_score(decoder: CausalLMDecoder, prompt: list[int], candidate: list[int]) -> float:
    """Sum of log_softmax over the candidate positions of the unpadded prompt + candidate sequence."""
    lm = decoder.lm.eval()
    sequence = torch.tensor([prompt + candidate])
    logp = torch.log_softmax(lm(input_ids=sequence, use_cache=False).logits[0], dim=-1)
    total = sum(float(logp[len(prompt) - 1 + k, token]) for k, token in enumerate(candidate))
    decoder.lm.train()
    return total


def padded_row(tokens: list[int], width: int) -> list[int]:
    return tokens + [PAD] * (width - len(tokens))


def test_left_pad() -> None:
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=1)
    assert ids.tolist() == [[5, 6, 7], [1, 1, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="row 1 is empty"):
        left_pad([[5], []], pad_id=0)


def test_greedy_batch_matches_uncached_reference_of_each_row(decoder: CausalLMDecoder) -> None:
    steps, eos = 6, VOCAB - 1  # eos unlikely to be hit here; the eos test below makes sure it is
    ids, mask = left_pad(PROMPTS, PAD)
    out = greedy_generate(decoder, decoder.embed(ids), mask, max_new_tokens=steps, eos_token_id=eos,
                          pad_token_id=PAD)
    assert out.dtype == torch.long and out.shape[0] == len(PROMPTS) and out.shape[1] <= steps
    expected = [padded_row(reference_greedy(decoder, p, steps, eos), out.shape[1]) for p in PROMPTS]
    assert out.tolist() == expected
    assert len({tuple(row) for row in expected}) > 1  # the rows really differ (the test can fail)
    assert decoder.training and decoder.lm.training  # the training flag is restored
    # each row alone (no padding at all) gives the same tokens as in the padded batch
    for row, prompt in enumerate(PROMPTS):
        single = torch.tensor([prompt])
        alone = greedy_generate(decoder, decoder.embed(single), torch.ones_like(single), max_new_tokens=steps,
                                eos_token_id=eos, pad_token_id=PAD)
        assert padded_row(alone[0].tolist(), out.shape[1]) == out[row].tolist()


def test_greedy_matches_hf_generate_from_ids(decoder: CausalLMDecoder) -> None:
    steps, eos = 5, VOCAB - 1
    ids, mask = left_pad(PROMPTS, PAD)
    out = greedy_generate(decoder, decoder.embed(ids), mask, max_new_tokens=steps, eos_token_id=eos,
                          pad_token_id=PAD)
    lm = decoder.lm.eval()  # generate() does not switch off dropout itself
    with torch.no_grad():
        hf = lm.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=steps,
                         eos_token_id=eos, pad_token_id=PAD)
    decoder.lm.train()
    assert out.tolist() == hf[:, ids.shape[1]:].tolist()


def test_eos_stops_a_row_and_pads_after_it(decoder: CausalLMDecoder) -> None:
    steps = 6
    free = reference_greedy(decoder, PROMPTS[0], steps, eos=-1)
    eos = free[2]  # make row 0's third token the end token
    cut = free.index(eos)  # its first occurrence (<= 2)
    ids, mask = left_pad(PROMPTS, PAD)
    out = greedy_generate(decoder, decoder.embed(ids), mask, max_new_tokens=steps, eos_token_id=eos,
                          pad_token_id=PAD)
    assert out[0].tolist() == padded_row(free[: cut + 1], out.shape[1])  # eos kept, then padding
    for row, prompt in enumerate(PROMPTS):
        assert out[row].tolist() == padded_row(reference_greedy(decoder, prompt, steps, eos), out.shape[1])
    # when every row has finished, decoding stops early: N = the step of the last eos
    single = torch.tensor([PROMPTS[0]])
    alone = greedy_generate(decoder, decoder.embed(single), torch.ones_like(single), max_new_tokens=steps,
                            eos_token_id=[VOCAB - 2, eos], pad_token_id=PAD)
    assert alone.shape == (1, cut + 1) and int(alone[0, -1]) == eos


def test_score_candidates_equals_brute_force_sum(decoder: CausalLMDecoder) -> None:
    eos = VOCAB - 1
    candidates = [[20, 21, eos], [20, eos], [22], [20, 21, 23, eos]]  # shared prefixes, lengths 1..4
    ids, mask = left_pad(PROMPTS, PAD)
    scores = score_candidates(decoder, decoder.embed(ids), mask, candidates)
    assert scores.shape == (len(PROMPTS), len(candidates)) and scores.dtype == torch.float64
    expected = torch.tensor([[reference_score(decoder, p, c) for c in candidates] for p in PROMPTS],
                            dtype=torch.float64)
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-9)
    frozen = decoder.lm.get_input_embeddings().eval()  # a part deliberately kept in eval mode
    answer = constrained_answer(decoder, decoder.embed(ids), mask, candidates)
    assert answer.tolist() == expected.argmax(-1).tolist()
    assert decoder.lm.training and not frozen.training  # each module's own flag is restored
    frozen.train()


def test_scoring_real_gpt2_labels_with_shared_prefix() -> None:
    """Labels tokenized by the real GPT-2 BPE (" New" is a prefix of " New York"), eos appended."""
    from mmtrain.components.lm.tokenizers import builtin_tokenizer

    tokenizer = builtin_tokenizer("gpt2")
    decoder = build_decoder("gpt2", vocab_size=len(tokenizer))
    labels = [" New", " New York", " Boston"]
    candidates = [tokenizer(label)["input_ids"] + [tokenizer.eos_token_id] for label in labels]
    assert candidates[1][: len(candidates[0]) - 1] == candidates[0][:-1]  # really a shared prefix
    prompts = [tokenizer(text)["input_ids"] for text in ["The city is", "Q: where? A:"]]
    ids, mask = left_pad(prompts, tokenizer.eos_token_id)
    scores = score_candidates(decoder, decoder.embed(ids), mask, candidates)
    expected = torch.tensor([[reference_score(decoder, p, c) for c in candidates] for p in prompts],
                            dtype=torch.float64)
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-9)


def test_bad_inputs_say_what_to_do() -> None:
    decoder = build_decoder("trm")
    ids = torch.tensor([[3, 4, 5], [6, 7, PAD]])
    right_padded = torch.tensor([[1, 1, 1], [1, 1, 0]])
    with pytest.raises(ValueError, match="row 1 is not LEFT-padded"):
        greedy_generate(decoder, decoder.embed(ids), right_padded, max_new_tokens=2, eos_token_id=1, pad_token_id=0)
    with pytest.raises(ValueError, match="not LEFT-padded"):
        score_candidates(decoder, decoder.embed(ids), torch.tensor([[1, 1, 1], [0, 0, 0]]), [[1]])
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_generate(decoder, decoder.embed(ids), torch.ones_like(ids), max_new_tokens=0, eos_token_id=1,
                        pad_token_id=0)
    with pytest.raises(ValueError, match="candidate 1 is empty"):
        score_candidates(decoder, decoder.embed(ids), torch.ones_like(ids), [[1], []])
    with pytest.raises(ValueError, match="vocabulary"):
        score_candidates(decoder, decoder.embed(ids), torch.ones_like(ids), [[VOCAB]])
    with pytest.raises(ValueError, match="decoder's width"):
        greedy_generate(decoder, torch.zeros(2, 3, 7, dtype=torch.float64), torch.ones_like(ids), max_new_tokens=1,
                        eos_token_id=1, pad_token_id=0)
