"""Generation metrics against hand-computed values: BLEU-4, ROUGE-L, exact match, perplexity."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _dist import end_rank

from mmtrain.components.metrics.generation import (
    CorpusBLEU,
    ExactMatch,
    GenerationMetrics,
    RougeL,
    TokenPerplexity,
    normalize_answer,
    overlap_tokens,
    summed_token_nll,
)


def bleu(preds: list[str], targets: list) -> float:
    metric = CorpusBLEU()
    metric.update(preds, targets)
    return float(metric.compute())


def rouge_l(preds: list[str], targets: list) -> float:
    metric = RougeL()
    metric.update(preds, targets)
    return float(metric.compute())


def test_bleu_hand_computed_corpus() -> None:
    # pair 1: "the cat sat on the mat" vs "the cat is on the mat"
    #   1-grams 5/6 (the x2, cat, on, mat), 2-grams 3/5 (the cat, on the, the mat),
    #   3-grams 1/4 (on the mat), 4-grams 0/3
    # pair 2: identical 6 tokens: 6/6, 5/5, 4/4, 3/3.  Corpus counts are summed before the ratios:
    #   p = 11/12, 8/10, 5/8, 3/6; equal lengths (12 vs 12) -> brevity penalty 1.
    preds = ["The cat sat on the mat", "a dog runs in the  PARK"]  # case and spacing are normalised
    targets = ["the cat is on the mat", "A dog runs in the park"]
    expected = (11 / 12 * 8 / 10 * 5 / 8 * 3 / 6) ** 0.25
    assert bleu(preds, targets) == pytest.approx(expected, abs=1e-6)
    # the same corpus in two batches: state is summed, the score is the corpus score
    metric = CorpusBLEU()
    metric.update(preds[:1], targets[:1])
    metric.update(preds[1:], [[targets[1]]])  # a list of references works too
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-6)
    assert bleu(preds[:1], targets[:1]) == 0.0  # alone, pair 1 has no 4-gram match: no smoothing


def test_bleu_identity_disjoint_brevity_and_references() -> None:
    text = "a dog runs in the park today"
    assert bleu([text], [text]) == pytest.approx(1.0)
    assert bleu(["x y z w v"], ["a b c d e"]) == 0.0
    # all precisions 1, candidate 6 tokens vs reference 7: BP = exp(1 - 7/6)
    assert bleu(["a dog runs in the park"], [text]) == pytest.approx(math.exp(1 - 7 / 6), abs=1e-6)
    # clipped counts take the max over references; the reference length closest to the candidate's
    assert bleu(["a dog runs in the park"], [[text, "a dog runs in the park"]]) == pytest.approx(1.0)
    assert overlap_tokens("  The MAT.\n") == ["the", "mat."]  # punctuation stays attached


@pytest.mark.filterwarnings("ignore:.*called before the ``update`` method")
def test_rouge_l_known_lcs() -> None:
    # LCS("police killed the gunman", "police kill the gunman") = police the gunman = 3 -> P = R = F = 3/4
    assert rouge_l(["police killed the gunman"], ["police kill the gunman"]) == pytest.approx(0.75)
    # LCS = "a b c" = 3: P = 3/3, R = 3/6, F = 2PR/(P+R) = 2/3
    assert rouge_l(["A b c"], ["a x b y c z"]) == pytest.approx(2 / 3)
    # averaged over samples: (3/4 + 2/4) / 2 ("the gunman" is the LCS of the second pair)
    metric = RougeL()
    metric.update(["police killed the gunman"], ["police kill the gunman"])
    metric.update(["the gunman kill police"], ["police killed the gunman"])
    assert float(metric.compute()) == pytest.approx(0.625)
    assert rouge_l(["x y"], [["p q", "x y"]]) == pytest.approx(1.0)  # best reference
    assert rouge_l(["x y"], ["p q"]) == 0.0
    assert math.isnan(float(RougeL().compute()))


@pytest.mark.parametrize(
    ("pred", "target", "same"),
    [
        ("Seven.", "seven", True),
        ("  The  answer is\tSeven!! ", "the answer is seven", True),
        ("U.S.", "u.s", True),  # trailing punctuation only
        ("u.s", "us", False),  # inner punctuation is kept
        ("seven", "seventeen", False),
        ("7", "seven", False),
        ("seven dogs", "seven", False),
    ],
)
def test_exact_match_normalisation(pred: str, target: str, same: bool) -> None:
    assert (normalize_answer(pred) == normalize_answer(target)) is same
    metric = ExactMatch()
    metric.update([pred], [target])
    assert float(metric.compute()) == float(same)


def test_exact_match_accumulates_and_accepts_several_references() -> None:
    metric = ExactMatch()
    metric.update(["cat", "dog"], [["a cat", "Cat."], "cow"])
    metric.update(["cow"], ["cow"])
    assert float(metric.compute()) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 predictions but 1 targets"):
        metric.update(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="non-empty list"):
        metric.update(["a"], [[]])


@pytest.mark.filterwarnings("ignore:.*called before the ``update`` method")
def test_perplexity_of_uniform_distribution_is_vocab_size() -> None:
    vocab = 37
    logits = torch.zeros(2, 5, vocab)  # uniform next-token distribution
    labels = torch.randint(0, vocab, (2, 5))
    labels[1, :3] = -100  # ignored (the prompt part)
    nll, count = summed_token_nll(logits, labels)
    assert int(count) == 4 + 2  # shifted: positions 1..4 of each row, row 1 keeps 3..4
    assert float(nll) == pytest.approx(6 * math.log(vocab))
    metric = TokenPerplexity()
    metric.update(nll, count)
    metric.update(3 * math.log(vocab), 3)  # plain numbers too
    assert float(metric.compute()) == pytest.approx(vocab)
    # a model putting probability 1/2 on every target: perplexity 2
    peaked = TokenPerplexity()
    peaked.update(10 * math.log(2), 10)
    assert float(peaked.compute()) == pytest.approx(2.0)
    assert math.isnan(float(TokenPerplexity().compute()))


def test_states_merge_like_ranks_and_bundle_resets() -> None:
    preds = ["the cat sat on the mat", "a dog runs in the park", "Seven."]
    targets = ["the cat is on the mat", "a dog runs in the park", "seven"]
    for cls in (CorpusBLEU, RougeL, ExactMatch):
        whole, left, right = cls(), cls(), cls()
        whole.update(preds, targets)
        left.update(preds[:2], targets[:2])
        right.update(preds[2:], targets[2:])
        left.merge_state(right)  # what the DDP sync does with the states of two ranks
        assert float(left.compute()) == pytest.approx(float(whole.compute()))
    bundle = GenerationMetrics()
    bundle.update(preds, targets)
    result = bundle.compute()
    assert set(result) == {"bleu", "rouge_l", "exact_match", "perplexity"}
    assert result["exact_match"] == pytest.approx(2 / 3) and math.isnan(result["perplexity"])
    bundle.update_nll(2 * math.log(5), 2)
    after_reset = bundle.compute()
    assert after_reset["perplexity"] == pytest.approx(5.0) and math.isnan(after_reset["exact_match"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    preds = ["the cat sat on the mat", "a dog runs in the park", "Seven.", "police killed the gunman"]
    targets = ["the cat is on the mat", "a dog runs in the park", "seven", "police kill the gunman"]
    metrics = GenerationMetrics()
    metrics.update(preds[rank::world], targets[rank::world])
    metrics.update_nll(float(rank + 1), rank + 2)  # total nll 3 over 5 tokens
    result = metrics.compute()
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    end_rank()


@pytest.mark.slow  # spawns two interpreters that import torch + transformers (~10 s on 2 busy cores)
def test_two_gloo_ranks_give_the_single_process_result(tmp_path: Path) -> None:
    """Real DDP (two gloo processes, each with half the samples): ``compute`` syncs the states."""
    preds = ["the cat sat on the mat", "a dog runs in the park", "Seven.", "police killed the gunman"]
    targets = ["the cat is on the mat", "a dog runs in the park", "seven", "police kill the gunman"]
    single = GenerationMetrics()
    single.update(preds, targets)
    single.update_nll(3.0, 5)
    expected = single.compute()
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == pytest.approx(expected)
    assert expected["perplexity"] == pytest.approx(math.exp(3 / 5))


def test_bleu_1_scores_one_word_answers_that_bleu_4_cannot() -> None:
    preds, refs = ["seven", "odd", "yes", "two"], ["seven", "even", "yes", "two"]
    four, one = CorpusBLEU(), CorpusBLEU(max_order=1)
    four.update(preds, refs)
    one.update(preds, refs)
    assert float(four.compute()) == 0.0  # no 2-grams at all
    assert float(one.compute()) == pytest.approx(0.75)  # 3 of 4 unigrams match, equal lengths
    with pytest.raises(ValueError, match="max_order must be 1..4"):
        CorpusBLEU(max_order=5)
