"""Bradley-Terry scores from pairwise comparisons, and their agreement with reference scores."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy import stats
from scipy.sparse.linalg import spsolve
from scipy.special import expit, log_expit


def _objective(s: np.ndarray, first: np.ndarray, second: np.ndarray, y: np.ndarray, l2: float) -> float:
    d = s[first] - s[second]
    return float(-(y * log_expit(d) + (1.0 - y) * log_expit(-d)).sum() + l2 * (s @ s))


def _check_inputs(
    first: np.ndarray, second: np.ndarray, outcome: np.ndarray, num_items: int
) -> None:
    if not (first.shape == second.shape == outcome.shape) or first.ndim != 1:
        raise ValueError(
            f"fit_bradley_terry: first, second and outcome must be 1-D of one length, got shapes "
            f"{first.shape}, {second.shape}, {outcome.shape}"
        )
    for name, idx in (("first", first), ("second", second)):
        if idx.size and (idx.min() < 0 or idx.max() >= num_items):
            raise ValueError(f"fit_bradley_terry: {name} has indices outside 0..{num_items - 1}")
    if outcome.size and (np.isnan(outcome).any() or outcome.min() < 0 or outcome.max() > 1):
        raise ValueError("fit_bradley_terry: outcome values must lie in [0, 1] (1 first wins, 0.5 tie)")


def fit_bradley_terry(
    first: np.ndarray,
    second: np.ndarray,
    outcome: np.ndarray,
    num_items: int,
    l2: float = 1e-4,
    iterations: int = 200,
) -> np.ndarray:
    """Bradley-Terry scores by penalised maximum likelihood (Newton with backtracking).

    Comparison n says item ``first[n]`` beat ``second[n]`` with outcome ``y_n`` (1 first wins,
    0 second wins, 0.5 similar, counted as half a win each). The scores ``s`` minimise

        -sum_n [y_n log sigmoid(s_f - s_s) + (1 - y_n) log sigmoid(s_s - s_f)] + l2 * ||s||^2,

    which is strictly convex for ``l2 > 0`` (items never compared get 0). Returned centred to
    mean 0. The Hessian is sparse, so thousands of items are fine.

    Args:
        first: int [M] index of the first item of each comparison.
        second: int [M] index of the second item.
        outcome: float [M] in [0, 1].
        num_items: number of items.
        l2: penalty weight (> 0).
        iterations: maximum Newton steps.

    Returns:
        float64 [num_items] scores.
    """
    first = np.asarray(first, dtype=np.int64).ravel()
    second = np.asarray(second, dtype=np.int64).ravel()
    y = np.asarray(outcome, dtype=np.float64).ravel()
    _check_inputs(first, second, y, num_items)
    if l2 <= 0:
        raise ValueError(f"fit_bradley_terry: l2 must be > 0, got {l2}")
    s = np.zeros(num_items)
    loss = _objective(s, first, second, y, l2)
    rows = np.concatenate([first, second, first, second])
    cols = np.concatenate([first, second, second, first])
    ridge = 2.0 * l2 * sp.identity(num_items, format="csr")
    for _ in range(iterations):
        d = s[first] - s[second]
        p = expit(d)
        resid = p - y  # d loss / d d_n
        grad = np.bincount(first, resid, num_items) - np.bincount(second, resid, num_items) + 2.0 * l2 * s
        w = p * (1.0 - p)
        hess = sp.csr_matrix((np.concatenate([w, w, -w, -w]), (rows, cols)), shape=(num_items, num_items))
        step = spsolve((hess + ridge).tocsc(), grad)
        t = 1.0
        while True:  # backtracking line search (Armijo)
            candidate = s - t * step
            new_loss = _objective(candidate, first, second, y, l2)
            if new_loss <= loss - 1e-4 * t * float(grad @ step) or t < 1e-10:
                break
            t *= 0.5
        s, loss = candidate, new_loss
        if np.max(np.abs(t * step)) < 1e-10:
            break
    return s - s.mean()


def score_correlations(pred_scores: np.ndarray, true_scores: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlation of predicted vs reference scores (both [N]).

    Returns:
        ``{"pearson": r, "spearman": rho}`` (scipy.stats; NaN when a side is constant).
    """
    pred = np.asarray(pred_scores, dtype=np.float64).ravel()
    true = np.asarray(true_scores, dtype=np.float64).ravel()
    if pred.shape != true.shape or pred.size < 2:
        raise ValueError(
            f"score_correlations needs two score arrays of one length >= 2, got {pred.shape} and {true.shape}"
        )
    return {
        "pearson": float(stats.pearsonr(pred, true).statistic),
        "spearman": float(stats.spearmanr(pred, true).statistic),
    }
