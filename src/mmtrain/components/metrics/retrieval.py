"""Cross-modal retrieval metrics: Recall@K over paired embeddings, optionally with match groups.

Row ``i`` of the query and of the gallery describe the same sample. Without ``groups`` a query's
only positive is the gallery row with its own index; with ``groups`` (LongTensor [N]) every gallery
row of the query's group is a positive (e.g. samples with the same caption or the same label).
A query's rank is ``1 + #{non-positive gallery items more similar than its best positive}``; it is
a hit at K when that rank is <= K (some positive ranks within K). With groups, identical gallery
rows of one group are one item (the ten captions of a data set where 200 samples share them are
ten items, not 200), so a wrong caption costs one rank, not one per copy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

# Similarities are compared in float64; a gallery item only outranks the true match when its
# similarity is larger by more than this, so exact ties (e.g. duplicated embeddings) never
# depend on the rounding of the matrix product.
TIE_TOLERANCE = 1e-9
# Queries scored per matrix product, bounding memory at CHUNK x N float64 values.
CHUNK = 1024


def _check_groups(groups: torch.Tensor | None, n: int) -> torch.Tensor | None:
    if groups is None:
        return None
    if groups.ndim != 1 or groups.shape[0] != n:
        raise ValueError(f"retrieval: groups must be a [N] tensor with N={n}, got shape {tuple(groups.shape)}")
    return groups.detach().to(torch.long).cpu()


def distinct_items(gallery: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``[N]`` bool: ``True`` for the first of every set of identical gallery rows of one group."""
    key = torch.cat([groups.to(torch.float64)[:, None], gallery.detach().to(torch.float64).cpu()], dim=1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1 if inverse.numel() else 0,), key.shape[0], dtype=torch.long)
    first = first.scatter_reduce(0, inverse, torch.arange(key.shape[0]), reduce="amin")
    mask = torch.zeros(key.shape[0], dtype=torch.bool)
    mask[first] = True
    return mask


@torch.no_grad()
def match_ranks(query: torch.Tensor, gallery: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """1-based rank of each query's best positive among the gallery's non-positive rows.

    rank_i = 1 + #{j not positive for i : cos(q_i, g_j) > max_{p positive} cos(q_i, g_p)}; ties
    count in the query's favour. Positives of query ``i``: gallery row ``i`` (no ``groups``) or
    every row ``j`` with ``groups[j] == groups[i]``; with ``groups``, identical rows of one group
    count once (see :func:`distinct_items`).

    Args:
        query: [N, D]; gallery: [N, D]; groups: optional LongTensor [N].

    Returns:
        Long tensor [N].
    """
    if query.ndim != 2 or query.shape != gallery.shape:
        raise ValueError(
            f"retrieval expects query and gallery of the same [N, D] shape, got "
            f"{tuple(query.shape)} and {tuple(gallery.shape)}"
        )
    n = query.shape[0]
    group_ids = _check_groups(groups, n)
    q = F.normalize(query.detach().to(torch.float64), dim=-1).cpu()
    g = F.normalize(gallery.detach().to(torch.float64), dim=-1).cpu()
    distinct = distinct_items(gallery, group_ids) if group_ids is not None else torch.ones(n, dtype=torch.bool)
    ranks = []
    for start in range(0, n, CHUNK):
        sim = q[start : start + CHUNK] @ g.T  # [c, N]
        rows = torch.arange(sim.shape[0])
        if group_ids is None:
            positive = torch.zeros_like(sim, dtype=torch.bool)
            positive[rows, rows + start] = True
        else:
            positive = group_ids[start : start + sim.shape[0], None] == group_ids[None, :]  # [c, N]
        best = sim.masked_fill(~positive, -math.inf).max(dim=1).values  # [c]
        above = (sim > best[:, None] + TIE_TOLERANCE) & ~positive & distinct[None, :]
        ranks.append(above.sum(dim=1) + 1)
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


def _check_ks(ks: Sequence[int]) -> list[int]:
    if any(int(k) <= 0 for k in ks):
        raise ValueError(f"recall_at_k: every k must be positive, got {list(ks)}")
    return [int(k) for k in ks]


def recall_at_k(
    query: torch.Tensor,
    gallery: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    groups: torch.Tensor | None = None,
) -> dict[int, float]:
    """Recall@K by cosine similarity: the fraction of queries with a positive ranked within K.

    Args:
        query: [N, D] query embeddings; row i's match is ``gallery[i]`` (and, with ``groups``,
            every gallery row of the same group).
        gallery: [N, D] gallery embeddings.
        ks: cut-offs (positive ints).
        groups: optional LongTensor [N] of match groups (see :func:`match_ranks`).

    Returns:
        ``{k: recall}`` with recalls in [0, 1].
    """
    ks = _check_ks(ks)
    ranks = match_ranks(query, gallery, groups)
    return {k: float((ranks <= k).double().mean()) for k in ks}


def chance_recall(
    n: int, ks: Sequence[int] = (1, 5, 10), groups: torch.Tensor | None = None, distinct: torch.Tensor | None = None
) -> dict[int, float]:
    """Expected Recall@K of a random ranking of ``n`` gallery rows under the same match rule.

    A query with ``m`` positive items among ``n'`` gallery items is a hit at K unless all of the
    first K items of a random order are non-positive: ``P = 1 - C(n' - m, K) / C(n', K)``,
    averaged over queries (``m = 1`` and ``n' = n`` without ``groups``, so ``K / n``).
    ``distinct`` ([N] bool, :func:`distinct_items`) marks the gallery rows that count as items.
    """
    ks = _check_ks(ks)
    group_ids = _check_groups(groups, n)
    if n == 0:
        return {k: float("nan") for k in ks}
    if group_ids is None:
        sizes, items = [1] * n, n
    else:
        keep = torch.ones(n, dtype=torch.bool) if distinct is None else distinct.cpu().to(torch.bool)
        per_group: dict[int, int] = {}
        for group in group_ids[keep].tolist():
            per_group[group] = per_group.get(group, 0) + 1
        sizes, items = [per_group[g] for g in group_ids.tolist()], int(keep.sum())
    out = {}
    for k in ks:
        if k >= items:
            out[k] = 1.0
            continue
        miss = {m: math.comb(items - m, k) / math.comb(items, k) for m in set(sizes)}
        out[k] = float(sum(1.0 - miss[m] for m in sizes) / n)
    return out


def retrieval_metrics(
    embeddings: dict[str, torch.Tensor],
    ks: Sequence[int] = (1, 5, 10),
    dims: list[int] | None = None,
    prefix: str = "val",
    *,
    pairs: Sequence[Sequence[str]] | None = None,
    groups: torch.Tensor | None = None,
    present: Mapping[str, torch.Tensor] | None = None,
    chance: bool = False,
) -> dict[str, float]:
    """Recall@K in both directions for modality pairs, optionally at Matryoshka prefix dims.

    Keys are ``{prefix}/r@{k}_{query}_{gallery}`` for the full embeddings and
    ``{prefix}/r@{k}_{query}_{gallery}@{d}`` for the first ``d`` features, e.g.
    ``val/r@1_image_text`` (image queries, text gallery) and ``val/r@1_text_image@128``.

    Args:
        embeddings: modality name -> [N, D] embeddings, row i of each describing sample i.
        ks: Recall cut-offs.
        dims: Matryoshka prefix widths to evaluate in addition to the full width.
        prefix: split name.
        pairs: unordered modality pairs to evaluate (both directions each); default every pair.
        groups: optional LongTensor [N] of match groups shared by all modalities.
        present: optional modality -> BoolTensor [N]; a pair only uses rows present in both.
        chance: also report ``{prefix}/chance_r@{k}_{query}_{gallery}`` (random-ranking Recall@K,
            each direction) and ``{prefix}/n_{a}_{b}`` (rows evaluated).

    Returns:
        Flat ``{key: recall}``.
    """
    names = list(embeddings)
    if len(names) < 2:
        raise ValueError(f"retrieval_metrics needs at least two modalities, got {names}")
    shapes = {name: tuple(t.shape) for name, t in embeddings.items()}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 2:
        raise ValueError(f"retrieval_metrics needs [N, D] embeddings of one shape, got {shapes}")
    n, width = next(iter(shapes.values()))
    for d in dims or []:
        if not 0 < d <= width:
            raise ValueError(f"retrieval_metrics: dim {d} is outside 1..{width} (the embedding width)")
    if pairs is None:
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    unknown = sorted({m for pair in pairs for m in pair} - set(names))
    if unknown:
        raise ValueError(f"retrieval_metrics: pairs name {unknown}, which have no embeddings ({names})")
    group_ids = _check_groups(groups, n)
    variants: list[tuple[str, int | None]] = [("", None)] + [(f"@{d}", d) for d in dims or []]
    out: dict[str, float] = {}
    for a, b in pairs:
        rows = torch.ones(n, dtype=torch.bool)
        for name in (a, b):
            if present is not None and present.get(name) is not None:
                rows &= present[name].detach().cpu().to(torch.bool)
        sub_groups = group_ids[rows] if group_ids is not None else None
        for q_name, g_name in ((a, b), (b, a)):
            q_all, g_all = embeddings[q_name][rows.to(embeddings[q_name].device)], embeddings[g_name][rows.to(embeddings[g_name].device)]
            for suffix, d in variants:
                q, g = (q_all, g_all) if d is None else (q_all[:, :d], g_all[:, :d])
                if q.shape[0] == 0:
                    values = {k: float("nan") for k in ks}
                else:
                    values = recall_at_k(q, g, ks, sub_groups)
                for k, value in values.items():
                    out[f"{prefix}/r@{k}_{q_name}_{g_name}{suffix}"] = value
            if chance:
                distinct = distinct_items(g_all, sub_groups) if sub_groups is not None and len(g_all) else None
                for k, value in chance_recall(int(rows.sum()), ks, sub_groups, distinct).items():
                    out[f"{prefix}/chance_r@{k}_{q_name}_{g_name}"] = value
        if chance:
            out[f"{prefix}/n_{a}_{b}"] = float(rows.sum())
    return out
