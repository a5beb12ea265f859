"""Bradley-Terry fit: recovers simulated scores and matches an independent scipy maximisation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize, stats

from mmtrain.components.metrics.bradley_terry import fit_bradley_terry, score_correlations


def _simulate(num_items: int, num_comparisons: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    true = rng.normal(0.0, 1.5, num_items)
    first = rng.integers(0, num_items, num_comparisons)
    second = (first + rng.integers(1, num_items, num_comparisons)) % num_items  # never itself
    p_first = 1.0 / (1.0 + np.exp(-(true[first] - true[second])))
    outcome = (rng.random(num_comparisons) < p_first).astype(float)
    close = np.abs(true[first] - true[second]) < 0.3
    outcome[close & (rng.random(num_comparisons) < 0.5)] = 0.5  # some "similar" labels
    return true, first, second, outcome


def _reference_fit(first: np.ndarray, second: np.ndarray, y: np.ndarray, n: int, l2: float) -> np.ndarray:
    """Direct BFGS on the tie-as-half-win negative log-likelihood, written out here."""

    def nll(s: np.ndarray) -> tuple[float, np.ndarray]:
        d = s[first] - s[second]
        # -log sigmoid(d) = log(1 + exp(-d))
        value = np.sum(y * np.logaddexp(0.0, -d) + (1.0 - y) * np.logaddexp(0.0, d)) + l2 * np.sum(s**2)
        dd = -y / (1.0 + np.exp(d)) + (1.0 - y) / (1.0 + np.exp(-d))
        grad = np.zeros(n)
        np.add.at(grad, first, dd)
        np.add.at(grad, second, -dd)
        return value, grad + 2.0 * l2 * s

    result = optimize.minimize(nll, np.zeros(n), jac=True, method="BFGS", options={"gtol": 1e-10, "maxiter": 5000})
    return result.x - result.x.mean()


def test_recovers_ordering_of_known_scores() -> None:
    true, first, second, outcome = _simulate(30, 3000, seed=0)
    scores = fit_bradley_terry(first, second, outcome, num_items=30)
    assert scores.shape == (30,)
    assert abs(scores.mean()) < 1e-9
    assert stats.spearmanr(scores, true).statistic > 0.9


@pytest.mark.parametrize("l2", [1e-4, 1e-2])
def test_agrees_with_direct_maximisation(l2: float) -> None:
    _, first, second, outcome = _simulate(12, 400, seed=1)
    ours = fit_bradley_terry(first, second, outcome, num_items=12, l2=l2)
    ref = _reference_fit(first, second, outcome, 12, l2)
    np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_unseen_items_and_unbeaten_item_stay_finite() -> None:
    first = np.array([0, 0, 0, 1])
    second = np.array([1, 2, 1, 2])
    outcome = np.array([1.0, 1.0, 1.0, 0.5])
    scores = fit_bradley_terry(first, second, outcome, num_items=5)
    assert np.all(np.isfinite(scores))
    assert scores[0] > scores[1] and scores[0] > scores[2]
    assert scores[3] == pytest.approx(scores[4])  # never compared


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="outside"):
        fit_bradley_terry(np.array([0]), np.array([3]), np.array([1.0]), num_items=3)
    with pytest.raises(ValueError, match="outcome"):
        fit_bradley_terry(np.array([0]), np.array([1]), np.array([2.0]), num_items=3)


def test_score_correlations_match_scipy() -> None:
    pred = np.array([0.3, 1.2, -0.5, 2.0, 0.9, -1.1])
    true = np.array([0.1, 1.0, -0.2, 1.5, 1.4, -0.9])
    out = score_correlations(pred, true)
    assert set(out) == {"pearson", "spearman"}
    assert out["pearson"] == pytest.approx(stats.pearsonr(pred, true)[0], abs=1e-12)
    assert out["spearman"] == pytest.approx(stats.spearmanr(pred, true)[0], abs=1e-12)
    assert out["spearman"] == pytest.approx(1 - 6 * 2 / (6 * 35))  # one adjacent swap
