"""Cross-modal retrieval metrics: Recall@K over paired embeddings (query i matches gallery i)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Similarities are compared in float64; a gallery item only outranks the true match when its
# similarity is larger by more than this, so exact ties (e.g. duplicated embeddings) never
# depend on the rounding of the matrix product.
TIE_TOLERANCE = 1e-9
# Queries scored per matrix product, bounding memory at CHUNK x N float64 values.
CHUNK = 1024


@torch.no_grad()
def match_ranks(query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """1-based rank of each query's true match (gallery row with the same index).

    rank_i = 1 + #{j : cos(q_i, g_j) > cos(q_i, g_i)}; ties count in the query's favour.

    Args:
        query: [N, D]; gallery: [N, D].

    Returns:
        Long tensor [N].
    """
    if query.ndim != 2 or query.shape != gallery.shape:
        raise ValueError(
            f"retrieval expects query and gallery of the same [N, D] shape, got "
            f"{tuple(query.shape)} and {tuple(gallery.shape)}"
        )
    q = F.normalize(query.detach().to(torch.float64), dim=-1)
    g = F.normalize(gallery.detach().to(torch.float64), dim=-1)
    ranks = []
    for start in range(0, q.shape[0], CHUNK):
        sim = q[start : start + CHUNK] @ g.T  # [c, N]
        rows = torch.arange(sim.shape[0], device=sim.device)
        true = sim[rows, rows + start]  # [c]
        ranks.append((sim > true[:, None] + TIE_TOLERANCE).sum(dim=1) + 1)
    return torch.cat(ranks).cpu()


def recall_at_k(
    query: torch.Tensor,
    gallery: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[int, float]:
    """Recall@K by cosine similarity: the fraction of queries whose match ranks within K.

    Args:
        query: [N, D] query embeddings; row i's match is ``gallery[i]``.
        gallery: [N, D] gallery embeddings.
        ks: cut-offs (positive ints).

    Returns:
        ``{k: recall}`` with recalls in [0, 1].
    """
    if any(int(k) <= 0 for k in ks):
        raise ValueError(f"recall_at_k: every k must be positive, got {list(ks)}")
    ranks = match_ranks(query, gallery)
    return {int(k): float((ranks <= int(k)).double().mean()) for k in ks}


def retrieval_metrics(
    embeddings: dict[str, torch.Tensor],
    ks: Sequence[int] = (1, 5, 10),
    dims: list[int] | None = None,
    prefix: str = "val",
) -> dict[str, float]:
    """Recall@K for every ordered pair of modalities, optionally at Matryoshka prefix dims.

    Keys are ``{prefix}/r@{k}_{query}_{gallery}`` for the full embeddings and
    ``{prefix}/r@{k}_{query}_{gallery}@{d}`` for the first ``d`` features, e.g.
    ``val/r@1_image_text`` (image queries, text gallery) and ``val/r@1_text_image@128``.

    Args:
        embeddings: modality name -> [N, D] embeddings, row i of each describing sample i.
        ks: Recall cut-offs.
        dims: Matryoshka prefix widths to evaluate in addition to the full width.
        prefix: split name.

    Returns:
        Flat ``{key: recall}``.
    """
    names = list(embeddings)
    if len(names) < 2:
        raise ValueError(f"retrieval_metrics needs at least two modalities, got {names}")
    shapes = {name: tuple(t.shape) for name, t in embeddings.items()}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 2:
        raise ValueError(f"retrieval_metrics needs [N, D] embeddings of one shape, got {shapes}")
    width = next(iter(shapes.values()))[1]
    for d in dims or []:
        if not 0 < d <= width:
            raise ValueError(f"retrieval_metrics: dim {d} is outside 1..{width} (the embedding width)")
    variants: list[tuple[str, int | None]] = [("", None)] + [(f"@{d}", d) for d in dims or []]
    out: dict[str, float] = {}
    for q_name in names:
        for g_name in names:
            if q_name == g_name:
                continue
            for suffix, d in variants:
                q, g = embeddings[q_name], embeddings[g_name]
                if d is not None:
                    q, g = q[:, :d], g[:, :d]
                for k, value in recall_at_k(q, g, ks).items():
                    out[f"{prefix}/r@{k}_{q_name}_{g_name}{suffix}"] = value
    return out
