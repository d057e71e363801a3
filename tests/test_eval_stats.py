"""eval/stats.py against scipy's reference implementations and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize, stats as sps

from eval import stats


@pytest.mark.parametrize("k,n", [(0, 10), (1, 10), (5, 10), (10, 10), (37, 200), (199, 200), (3, 7), (0, 1)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_matches_scipy(k, n, confidence):
    ref = sps.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    lo, hi = stats.wilson_interval(k, n, confidence)
    assert lo == pytest.approx(ref.low, abs=1e-12)
    assert hi == pytest.approx(ref.high, abs=1e-12)


def test_wilson_hand_value_and_edges():
    # k=5, n=10, z=1.959964: centre 0.5, half-width z/(n+z²)·sqrt(2.5 + z²/4) = 0.26340
    lo, hi = stats.wilson_interval(5, 10)
    assert (lo, hi) == pytest.approx((0.2365931, 0.7634069), abs=1e-6)
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        stats.wilson_interval(3, 2)
    r = stats.proportion(3, 4)
    assert r["rate"] == 0.75 and r["n"] == 4 and r["method"] == "wilson"


@pytest.mark.parametrize("k,n", [(0, 0), (0, 5), (1, 9), (4, 8), (7, 10), (12, 40), (60, 130), (3, 1000)])
def test_exact_binomial_matches_scipy(k, n):
    ref = sps.binomtest(k, n, 0.5).pvalue if n else 1.0
    assert stats.binomial_two_sided_p(k, n) == pytest.approx(ref, rel=1e-9, abs=1e-300)


def test_mcnemar_exact_on_discordant_pairs():
    rng = np.random.default_rng(3)
    a = rng.random(150) < 0.6
    b = rng.random(150) < 0.4
    res = stats.mcnemar_exact(a, b)
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    assert (res["a_only"], res["b_only"]) == (a_only, b_only)
    assert res["both"] + res["neither"] + a_only + b_only == 150
    assert res["p_value"] == pytest.approx(sps.binomtest(a_only, a_only + b_only, 0.5).pvalue, rel=1e-9)
    # no discordant pairs: no evidence of a difference
    assert stats.mcnemar_exact([True, False], [True, False])["p_value"] == 1.0
    with pytest.raises(ValueError):
        stats.mcnemar_exact([True], [True, False])


def test_sign_test():
    assert stats.sign_test(9, 1)["p_value"] == pytest.approx(sps.binomtest(9, 10).pvalue)


def test_bootstrap_matches_scipy_exactly():
    x = np.random.default_rng(0).normal(size=57)
    ref = sps.bootstrap((x,), np.mean, method="percentile", n_resamples=999, confidence_level=0.9,
                        rng=np.random.default_rng(42))
    lo, hi = stats.bootstrap_mean_ci(x, n_resamples=999, confidence=0.9, seed=42)
    assert lo == pytest.approx(ref.confidence_interval.low, abs=1e-12)
    assert hi == pytest.approx(ref.confidence_interval.high, abs=1e-12)
    lo2, hi2 = stats.bootstrap_ci(lambda idx: float(x[idx].mean()), len(x), 999, 0.9, 42)
    assert (lo2, hi2) == pytest.approx((lo, hi), abs=1e-12)


def test_paired_bootstrap_matches_scipy_paired():
    rng = np.random.default_rng(1)
    o = rng.choice([-1, 0, 1], size=40)
    d = rng.normal(size=40)

    def stat_scipy(o_, d_, axis=-1):
        return np.mean((o_ + 1) / 2 + 0 * d_, axis=axis)

    ref = sps.bootstrap((o, d), stat_scipy, paired=True, method="percentile", n_resamples=500,
                        rng=np.random.default_rng(7))
    lo, hi = stats.bootstrap_ci(lambda idx: stats.win_rate(o[idx]), 40, 500, 0.95, 7)
    assert (lo, hi) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high), abs=1e-12)


def test_win_rate_and_win_tie_lose():
    outcomes = [1, 1, 0, -1, 1, 0, 0, -1, 1, 1]
    res = stats.win_tie_lose(outcomes, n_resamples=999, seed=5)
    assert (res["win"]["k"], res["tie"]["k"], res["lose"]["k"]) == (5, 3, 2)
    assert res["win_rate"]["rate"] == pytest.approx((5 + 1.5) / 10)
    ref = sps.bootstrap((stats.outcome_scores(outcomes),), np.mean, method="percentile", n_resamples=999,
                        rng=np.random.default_rng(5))
    assert res["win_rate"]["ci"] == pytest.approx([ref.confidence_interval.low, ref.confidence_interval.high])
    assert res["sign_test"]["p_value"] == pytest.approx(sps.binomtest(5, 7).pvalue)


def test_combine_orders_disagreement_is_tie():
    assert stats.combine_orders([1, 1, -1, 0, -1, 1], [1, -1, -1, 1, 0, 0]) == [1, 0, -1, 0, 0, 0]


def test_logistic_fit_matches_scipy_optimizer():
    rng = np.random.default_rng(2)
    x = rng.normal(size=300)
    y = (rng.random(300) < 1 / (1 + np.exp(-(0.3 + 1.2 * x)))).astype(float)
    y[::7] = 0.5  # ties count as half a win
    b0, b1 = stats.logistic_fit(x, y, l2=0.0)

    def nll(beta):
        z = beta[0] + beta[1] * x
        return -np.mean(y * z - np.logaddexp(0, z))

    ref = optimize.minimize(nll, np.zeros(2), method="BFGS", options={"gtol": 1e-10}).x
    assert (b0, b1) == pytest.approx(tuple(ref), abs=1e-5)


def test_length_controlled_win_rate():
    rng = np.random.default_rng(4)
    n = 400
    base = rng.integers(20, 120, n).astype(float)
    # no length effect: LC equals the plain win rate (up to the tiny ridge)
    pol = base.copy()
    outcomes = rng.choice([-1, 0, 1], size=n, p=[0.3, 0.2, 0.5])
    lc = stats.length_controlled_win_rate(outcomes, pol, base)
    assert lc["rate"] == pytest.approx(stats.win_rate(outcomes), abs=1e-6)
    # wins explained by length alone, and the policy is longer on average: the raw win rate is
    # inflated, the length-controlled one (win probability at equal length) is back near 0.5
    diff = rng.normal(30, 40, n)
    s = diff.std()
    p_win = 1 / (1 + np.exp(-(0.0 + 2.0 * np.tanh(diff / s))))
    outcomes = np.where(rng.random(n) < p_win, 1, -1)
    raw = stats.win_rate(outcomes)
    lc = stats.length_controlled_with_ci(outcomes, base + diff, base, n_resamples=200, seed=0)
    assert raw > 0.65
    assert lc["b1"] > 1.0
    assert abs(lc["rate"] - 0.5) < 0.08
    assert lc["ci"][0] < lc["rate"] < lc["ci"][1]
    assert lc["scale"] == pytest.approx(s)


def test_mean_with_ci_and_paired_difference():
    x = [1.0, 2.0, 3.0, 4.0]
    m = stats.mean_with_ci(x, n_resamples=500, seed=0)
    assert m["mean"] == 2.5 and m["ci"][0] <= 2.5 <= m["ci"][1]
    d = stats.paired_difference([2, 3, 4], [1, 1, 1], n_resamples=500)
    assert d["mean"] == pytest.approx(2.0)


def test_cohen_kappa_matches_a_hand_computed_value():
    from rlhf_demo.stats import cohen_kappa

    # 10 items: both yes 3, both no 5, a-only 1, b-only 1 -> p_o = 0.8; p_a = p_b = 0.4 -> p_e = 0.16 + 0.36 = 0.52
    a = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    b = [1, 1, 1, 0, 1, 0, 0, 0, 0, 0]
    k = cohen_kappa(a, b)
    assert k["agreement"] == pytest.approx(0.8) and k["expected"] == pytest.approx(0.52)
    assert k["kappa"] == pytest.approx((0.8 - 0.52) / (1 - 0.52))
    assert cohen_kappa(a, a)["kappa"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        cohen_kappa([1], [1, 0])
