"""Leaderboard math on synthetic battles with known answers."""

import math
import random

import numpy as np
import pytest

from rlhf_demo.leaderboard import (Battle, battles_from_votes, bootstrap_intervals, bt_strengths, compute,
                                   fit_ratings, matrices)


def test_75_percent_wins_is_plus_191_points():
    battles = [Battle("sft", "rlhf-v1", 0.0)] * 750 + [Battle("sft", "rlhf-v1", 1.0)] * 250
    r = fit_ratings(battles)
    assert r["sft"] == pytest.approx(1000.0)
    assert r["rlhf-v1"] - r["sft"] == pytest.approx(400 * math.log10(3), abs=1.0)  # 190.8
    # without an anchor among the models, ratings centre on 1000
    r = fit_ratings([Battle("a", "b", 1.0)] * 750 + [Battle("a", "b", 0.0)] * 250)
    assert r["a"] + r["b"] == pytest.approx(2000.0) and r["a"] - r["b"] == pytest.approx(190.8, abs=1.0)


def test_a_tie_is_half_a_win():
    # 50 wins + 100 ties + 50 losses = even
    battles = [Battle("x", "y", 1.0)] * 50 + [Battle("x", "y", 0.5)] * 100 + [Battle("x", "y", 0.0)] * 50
    r = fit_ratings(battles)
    assert r["x"] == pytest.approx(r["y"], abs=1e-6)
    # 3 wins, 2 ties, 1 loss = 4 of 6 → 400·log10(2)
    battles = [Battle("x", "y", 1.0)] * 300 + [Battle("x", "y", 0.5)] * 200 + [Battle("x", "y", 0.0)] * 100
    r = fit_ratings(battles, prior=0.0)
    assert r["x"] - r["y"] == pytest.approx(400 * math.log10(2), abs=0.01)


def test_recovers_known_ratings_of_four_models():
    true = {"sft": 1000, "a": 1100, "b": 900, "c": 1250}
    rng = random.Random(0)
    battles = []
    for _ in range(20000):
        x, y = rng.sample(sorted(true), 2)
        p = 1 / (1 + 10 ** ((true[y] - true[x]) / 400))
        battles.append(Battle(x, y, 1.0 if rng.random() < p else 0.0))
    r = fit_ratings(battles)
    for m, v in true.items():
        assert r[m] == pytest.approx(v, abs=15)
    ci = bootstrap_intervals(battles, rounds=50, seed=1)
    for m in ("a", "b", "c"):
        lo, hi = ci[m]
        assert lo < r[m] < hi and hi - lo < 60


def test_perfect_record_stays_finite_thanks_to_the_prior():
    r = fit_ratings([Battle("a", "b", 1.0)] * 5)
    assert all(math.isfinite(v) for v in r.values()) and r["a"] > r["b"]


def test_mm_matches_the_closed_form_for_two_players():
    W = np.array([[0.0, 30.0], [10.0, 0.0]])
    p = bt_strengths(W, W + W.T, prior=0.0)
    assert p[0] / p[1] == pytest.approx(3.0, rel=1e-6)


def test_matrices():
    battles = [Battle("a", "b", 1.0), Battle("b", "a", 0.5), Battle("a", "c", 0.0)]
    names, rate, counts = matrices(battles)
    assert names == ["a", "b", "c"]
    assert rate[0, 1] == pytest.approx(0.75) and rate[1, 0] == pytest.approx(0.25)
    assert rate[0, 2] == 0.0 and math.isnan(rate[1, 2])
    assert counts.tolist() == [[0, 2, 1], [2, 0, 0], [1, 0, 0]]


def test_from_votes_blind_only_by_default_and_self_play_ignored():
    votes = [dict(left_policy="sft", right_policy="rlhf-v1", winner="right", blind=True),
             dict(left_policy="rlhf-v1", right_policy="sft", winner="left", blind=False),
             dict(left_policy="sft", right_policy="sft", winner="tie", blind=True),
             dict(left_policy="rlhf-v1", right_policy="sft", winner="both_bad", blind=True)]
    assert battles_from_votes(votes) == [Battle("sft", "rlhf-v1", 0.0), Battle("rlhf-v1", "sft", 0.5)]
    assert len(battles_from_votes(votes, blind_only=False)) == 3
    board = compute(votes, rounds=20)
    assert board.n_votes == 3 and board.n_battles == 2
    assert [row["model"] for row in board.rows] == ["rlhf-v1", "sft"]
    assert board.rows[0]["rank"] == 1 and board.rows[0]["battles"] == 2
    assert board.by_winner == {"right": 1, "tie": 1, "both_bad": 1}
    assert compute([], rounds=5).rows == []
