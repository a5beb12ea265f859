"""Recall@K against a brute-force pure-Python rank count; retrieval_metrics keys."""

from __future__ import annotations

import math
import random

import pytest
import torch

from mmtrain.components.metrics.retrieval import chance_recall, recall_at_k, retrieval_metrics


def _brute_force_recall(query: list[list[float]], gallery: list[list[float]], ks: tuple[int, ...]) -> dict[int, float]:
    def cos(u: list[float], v: list[float]) -> float:
        dot = sum(x * y for x, y in zip(u, v))
        return dot / (math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(y * y for y in v)))

    ranks = []
    for i, q in enumerate(query):
        true = cos(q, gallery[i])
        ranks.append(1 + sum(1 for g in gallery if cos(q, g) > true))
    return {k: sum(r <= k for r in ranks) / len(ranks) for k in ks}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("duplicates", [False, True])
def test_matches_brute_force(seed: int, duplicates: bool) -> None:
    rng = random.Random(seed)
    n, d = 40, 6
    query = [[rng.gauss(0, 1) for _ in range(d)] for _ in range(n)]
    # A noisy copy of the query makes retrieval non-trivial but not hopeless.
    gallery = [[x + rng.gauss(0, 1.5) for x in q] for q in query]
    if duplicates:  # ties: identical gallery rows and identical query rows
        for i in range(0, n, 4):
            gallery[i + 1] = list(gallery[i])
            gallery[i + 2] = [2.0 * x for x in gallery[i]]  # same direction, same cosine
            query[i + 3] = list(query[i])
    ks = (1, 5, 10)
    got = recall_at_k(torch.tensor(query, dtype=torch.float32), torch.tensor(gallery, dtype=torch.float32), ks)
    # brute force on the same float32 values
    q32 = torch.tensor(query, dtype=torch.float32).double().tolist()
    g32 = torch.tensor(gallery, dtype=torch.float32).double().tolist()
    assert got == _brute_force_recall(q32, g32, ks)


def test_perfect_and_worst_retrieval() -> None:
    x = torch.randn(20, 8)
    assert recall_at_k(x, x.clone()) == {1: 1.0, 5: 1.0, 10: 1.0}
    assert recall_at_k(x, 3.0 * x, ks=(1,)) == {1: 1.0}
    # every gallery item identical: all tied, every query counts its match first
    same = torch.ones(20, 8)
    assert recall_at_k(x, same, ks=(1,)) == {1: 1.0}


def test_retrieval_metrics_keys_and_values() -> None:
    torch.manual_seed(0)
    image = torch.randn(12, 16)
    embeddings = {"image": image, "text": image + 0.1 * torch.randn(12, 16), "audio": torch.randn(12, 16)}
    out = retrieval_metrics(embeddings, ks=(1, 5), dims=[4, 8])
    expected = {
        f"val/r@{k}_{q}_{g}{suffix}"
        for q in embeddings
        for g in embeddings
        if q != g
        for k in (1, 5)
        for suffix in ("", "@4", "@8")
    }
    assert set(out) == expected
    assert out["val/r@1_image_text"] == recall_at_k(embeddings["image"], embeddings["text"], ks=(1,))[1]
    assert out["val/r@5_text_image@4"] == recall_at_k(embeddings["text"][:, :4], image[:, :4], ks=(5,))[5]
    assert all(0.0 <= v <= 1.0 for v in out.values())
    assert set(retrieval_metrics(embeddings, ks=(1,), prefix="test")) >= {"test/r@1_audio_image"}


def test_retrieval_metrics_errors() -> None:
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="dim 16"):
        retrieval_metrics({"image": x, "text": x}, dims=[16])
    with pytest.raises(ValueError, match="one shape"):
        retrieval_metrics({"image": x, "text": torch.randn(5, 8)})
    with pytest.raises(ValueError, match="two modalities"):
        retrieval_metrics({"image": x})


def _brute_force_grouped(query: list[list[float]], gallery: list[list[float]], groups: list[int],
                         ks: tuple[int, ...]) -> dict[int, float]:
    """Rank = 1 + #non-positive gallery items more similar than the best positive (pure Python);
    identical gallery rows of one group are one item."""
    def cos(u: list[float], v: list[float]) -> float:
        dot = sum(x * y for x, y in zip(u, v))
        return dot / (math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(y * y for y in v)))

    ranks = []
    for i, q in enumerate(query):
        best = max(cos(q, g) for j, g in enumerate(gallery) if groups[j] == groups[i])
        above = {(groups[j], tuple(g)) for j, g in enumerate(gallery) if groups[j] != groups[i] and cos(q, g) > best + 1e-9}
        ranks.append(1 + len(above))
    return {k: sum(r <= k for r in ranks) / len(ranks) for k in ks}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_recall_matches_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    n, d = 36, 5
    groups = [rng.randrange(7) for _ in range(n)]
    query = [[rng.gauss(0, 1) for _ in range(d)] for _ in range(n)]
    gallery = [[x + rng.gauss(0, 2.0) for x in q] for q in query]
    for i in range(0, n, 6):  # identical gallery rows (e.g. one caption shared by several samples)
        gallery[i + 1] = list(gallery[i])
        groups[i + 2], gallery[i + 2] = groups[i], list(gallery[i])  # ... of one group: one item
    ks = (1, 3, 5, 10)
    q32 = torch.tensor(query, dtype=torch.float32)
    g32 = torch.tensor(gallery, dtype=torch.float32)
    got = recall_at_k(q32, g32, ks, groups=torch.tensor(groups))
    assert got == pytest.approx(_brute_force_grouped(q32.double().tolist(), g32.double().tolist(), groups, ks))
    # singleton groups reproduce the plain rule
    assert recall_at_k(q32, g32, ks, groups=torch.arange(n)) == recall_at_k(q32, g32, ks)


def test_chance_recall_matches_random_rankings() -> None:
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    exact = chance_recall(10, (1, 3, 20), groups)
    assert exact[1] == pytest.approx(float(sum((groups == g).sum() for g in groups)) / 100)  # mean m / n
    assert exact[20] == 1.0
    generator = torch.Generator().manual_seed(0)
    hits, trials = 0, 4000
    for _ in range(trials):
        order = torch.randperm(10, generator=generator)[:3]
        query = int(torch.randint(10, (1,), generator=generator))
        hits += bool((groups[order] == groups[query]).any())
    assert hits / trials == pytest.approx(exact[3], abs=0.03)
    assert chance_recall(50, (1, 5))[5] == pytest.approx(5 / 50)


def test_retrieval_metrics_pairs_presence_groups() -> None:
    torch.manual_seed(1)
    image = torch.randn(10, 8)
    embeddings = {"image": image, "text": image + 0.3 * torch.randn(10, 8), "audio": torch.randn(10, 8)}
    present = {"audio": torch.tensor([True] * 6 + [False] * 4)}
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    out = retrieval_metrics(embeddings, ks=(1,), pairs=[["image", "text"], ["audio", "text"]], groups=groups,
                            present=present, chance=True)
    assert set(out) == {"val/r@1_image_text", "val/r@1_text_image", "val/r@1_audio_text", "val/r@1_text_audio",
                        "val/chance_r@1_image_text", "val/chance_r@1_text_image", "val/chance_r@1_audio_text",
                        "val/chance_r@1_text_audio", "val/n_image_text", "val/n_audio_text"}
    assert out["val/n_audio_text"] == 6.0
    rows = present["audio"]
    assert out["val/r@1_audio_text"] == recall_at_k(embeddings["audio"][rows], embeddings["text"][rows], (1,),
                                                   groups[rows])[1]
    assert out["val/chance_r@1_image_text"] == pytest.approx(2 / 10)
    # identical gallery rows of a group are one item: two copies per group -> 5 items, 1 positive
    text = torch.randn(5, 8).repeat_interleave(2, dim=0)
    dup = retrieval_metrics({"image": image, "text": text}, ks=(1, 5), groups=groups, chance=True)
    assert dup["val/chance_r@1_image_text"] == pytest.approx(1 / 5) and dup["val/chance_r@5_image_text"] == 1.0
    assert dup["val/chance_r@1_text_image"] == pytest.approx(2 / 10)
    assert dup["val/r@5_image_text"] == 1.0  # 5 distinct captions: every query's caption is within 5
    with pytest.raises(ValueError, match="video"):
        retrieval_metrics(embeddings, pairs=[["image", "video"]])
