"""Pure statistics for the evaluation report (numpy + the standard library; no model code).

Everything here is small, deterministic given its seed, and tested against scipy's reference
implementations in ``tests/test_eval_stats.py``:

* :func:`wilson_interval` — the Wilson score interval of a binomial proportion (equals
  ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``).
* :func:`binomial_two_sided_p` / :func:`mcnemar_exact` / :func:`sign_test` — the exact binomial test
  at p = 1/2; McNemar's exact test is that test on the discordant pairs of a paired binary outcome.
* :func:`bootstrap_ci` — a seeded percentile bootstrap; it draws its resamples exactly as
  ``scipy.stats.bootstrap(..., method="percentile", rng=np.random.default_rng(seed))`` does (one
  ``rng.integers(0, n, (n_resamples, n))`` call), so the two agree to the last digit.
* :func:`combine_orders`, :func:`win_tie_lose`, :func:`length_controlled_win_rate` — the pairwise
  helpfulness statistics (see that function's docstring for the length-control method).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

WIN, TIE, LOSE = 1, 0, -1


# ---------------------------------------------------------------------------------------------
# proportions and exact binomial tests: shared with the pipeline's gates (rlhf_demo/stats.py)
# ---------------------------------------------------------------------------------------------
from rlhf_demo.stats import (binomial_two_sided_p, decide, mcnemar_exact, newcombe_paired_interval,  # noqa: E402,F401
                             paired_rates, proportion, wilson_interval, z_value)


def sign_test(wins: int, losses: int) -> dict:
    """Exact sign test of wins against losses (ties dropped)."""
    return {"wins": int(wins), "losses": int(losses), "p_value": binomial_two_sided_p(wins, wins + losses),
            "method": "sign-test-exact"}


# ---------------------------------------------------------------------------------------------
# bootstrap
# ---------------------------------------------------------------------------------------------
def bootstrap_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """The resample indices scipy.stats.bootstrap draws with ``rng=np.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, (n_resamples, n))


def bootstrap_ci(statistic: Callable[[np.ndarray], float], n: int, n_resamples: int = 2000,
                 confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(indices)`` over resamples of ``range(n)``.

    ``statistic`` receives an integer index array (one resample of the n observations) so paired
    data (outcome, length difference) stay paired. Returns (nan, nan) for n = 0.
    """
    if n == 0:
        return float("nan"), float("nan")
    idx = bootstrap_indices(n, n_resamples, seed)
    values = np.array([statistic(row) for row in idx], dtype=float)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_mean_ci(values: Sequence[float], n_resamples: int = 2000, confidence: float = 0.95,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (vectorised)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    means = x[bootstrap_indices(x.size, n_resamples, seed)].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def mean_with_ci(values: Sequence[float], n_resamples: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> dict:
    x = np.asarray(values, dtype=float)
    lo, hi = bootstrap_mean_ci(x, n_resamples, confidence, seed)
    return {"mean": float(x.mean()) if x.size else None, "ci": [lo, hi], "n": int(x.size),
            "std": float(x.std(ddof=1)) if x.size > 1 else None, "confidence": confidence,
            "method": "bootstrap-percentile"}


def paired_difference(a: Sequence[float], b: Sequence[float], n_resamples: int = 2000,
                      confidence: float = 0.95, seed: int = 0) -> dict:
    """Mean of a − b over paired observations, with a paired bootstrap interval."""
    if len(a) != len(b):
        raise ValueError("paired difference needs equal lengths")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    out = mean_with_ci(d, n_resamples, confidence, seed)
    out["method"] = "paired-bootstrap-percentile"
    return out


# ---------------------------------------------------------------------------------------------
# pairwise comparisons
# ---------------------------------------------------------------------------------------------
def combine_orders(first: Sequence[int], second: Sequence[int]) -> list[int]:
    """One outcome per pair from the two judging orders, both already expressed from the
    policy's point of view (+1 policy better, 0 tie, −1 baseline better): a win or a loss only when
    both orders agree; any disagreement (or a tie in either order) is a tie."""
    if len(first) != len(second):
        raise ValueError("both orders need one verdict per pair")
    return [int(x) if (x == y and x != TIE) else TIE for x, y in zip(first, second)]


def outcome_scores(outcomes: Sequence[int]) -> np.ndarray:
    """win → 1, tie → 0.5, lose → 0."""
    o = np.asarray(outcomes, dtype=float)
    return (o + 1.0) / 2.0


def win_rate(outcomes: Sequence[int]) -> float:
    """(wins + ties / 2) / n — 0.5 means "as good as the baseline"."""
    return float(outcome_scores(outcomes).mean()) if len(outcomes) else float("nan")


def win_tie_lose(outcomes: Sequence[int], confidence: float = 0.95, n_resamples: int = 2000,
                 seed: int = 0) -> dict:
    """Counts and Wilson intervals of win / tie / lose, and the win rate with a bootstrap interval."""
    o = np.asarray(outcomes, dtype=int)
    n = int(o.size)
    wins, ties, losses = int(np.sum(o == WIN)), int(np.sum(o == TIE)), int(np.sum(o == LOSE))
    scores = outcome_scores(o)
    lo, hi = bootstrap_mean_ci(scores, n_resamples, confidence, seed)
    return {"n": n, "win": proportion(wins, n, confidence), "tie": proportion(ties, n, confidence),
            "lose": proportion(losses, n, confidence),
            "win_rate": {"rate": float(scores.mean()) if n else None, "ci": [lo, hi], "n": n,
                         "confidence": confidence, "method": "bootstrap-percentile",
                         "definition": "(wins + ties/2) / n"},
            "sign_test": sign_test(wins, losses)}


def logistic_fit(x: np.ndarray, y: np.ndarray, l2: float = 1e-4, max_iter: int = 100,
                 tol: float = 1e-10) -> np.ndarray:
    """Logistic regression ``logit P(y=1) = b0 + b1·x`` by Newton's method on the mean
    log-likelihood with a tiny ridge penalty on b1 (keeps separable data finite). ``y`` may be
    fractional (0.5 for a tie = half a win, half a loss). Returns (b0, b1)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    X = np.column_stack([np.ones_like(x), x])
    beta = np.zeros(2)
    penalty = np.array([0.0, l2])
    n = max(1, len(y))
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(X @ beta)))
        grad = X.T @ (y - p) / n - penalty * beta
        hess = (X.T * (p * (1 - p))) @ X / n + np.diag(penalty)
        hess += 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        beta = beta + step
        if np.max(np.abs(step)) < tol:
            break
    return beta


def length_controlled_win_rate(outcomes: Sequence[int], policy_lengths: Sequence[float],
                               baseline_lengths: Sequence[float], scale: float | None = None) -> dict:
    """Win rate with the effect of answer length removed (after AlpacaEval 2's length control).

    Method: regress the pairwise outcome y (win 1, tie ½, lose 0) on the length difference
    ``d = len(policy) − len(baseline)`` (tokens) with a logistic model
    ``logit P(win) = b0 + b1·tanh(d / s)`` where ``s`` is the standard deviation of d (tanh keeps
    a few very long answers from dominating). The length-controlled win rate is the model's win
    probability at zero length difference, ``sigmoid(b0)``: how often the policy would win if its
    answers were as long as the baseline's. When lengths do not differ (or do not predict wins),
    it equals the ordinary win rate up to the regression's tiny ridge penalty.
    """
    y = outcome_scores(outcomes)
    d = np.asarray(policy_lengths, dtype=float) - np.asarray(baseline_lengths, dtype=float)
    if not (len(y) == len(d)):
        raise ValueError("outcomes and lengths must align")
    if len(y) == 0:
        return {"rate": None, "b0": None, "b1": None, "scale": None}
    s = float(scale) if scale else float(np.std(d))
    feat = np.tanh(d / s) if s > 0 else np.zeros_like(d)
    b0, b1 = logistic_fit(feat, y)
    return {"rate": float(1.0 / (1.0 + math.exp(-b0))), "b0": float(b0), "b1": float(b1), "scale": s,
            "mean_length_difference": float(d.mean()),
            "method": "logistic regression of win on tanh(length difference / sd); win rate at zero difference"}


def length_controlled_with_ci(outcomes: Sequence[int], policy_lengths: Sequence[float],
                              baseline_lengths: Sequence[float], confidence: float = 0.95,
                              n_resamples: int = 500, seed: int = 0) -> dict:
    """:func:`length_controlled_win_rate` plus a paired percentile bootstrap interval (the scale
    ``s`` is fixed at the full sample's value so resamples measure the same quantity)."""
    o = np.asarray(outcomes, dtype=int)
    lp = np.asarray(policy_lengths, dtype=float)
    lb = np.asarray(baseline_lengths, dtype=float)
    point = length_controlled_win_rate(o, lp, lb)
    if point["rate"] is None:
        return dict(point, ci=[float("nan"), float("nan")], n=0)
    scale = point["scale"] or None

    def stat(idx: np.ndarray) -> float:
        return length_controlled_win_rate(o[idx], lp[idx], lb[idx], scale=scale)["rate"]

    lo, hi = bootstrap_ci(stat, len(o), n_resamples, confidence, seed)
    return dict(point, ci=[lo, hi], n=int(len(o)), confidence=confidence)
