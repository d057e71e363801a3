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


# -- rigour: minimum battles, length control, position bias (issue #15) -------------------------------------
from rlhf_demo.leaderboard import (MIN_BATTLES, fit_length_controlled, length_feature,  # noqa: E402
                                   position_bias)


def lc_battles(longer, shorter):
    """(wins, n) of a over b when a's answer is longer (300 vs 100 chars: d = +0.5) and when it is shorter."""
    (k1, n1), (k2, n2) = longer, shorter
    return ([Battle("a", "b", 1.0, 300, 100)] * k1 + [Battle("a", "b", 0.0, 300, 100)] * (n1 - k1)
            + [Battle("a", "b", 1.0, 100, 300)] * k2 + [Battle("a", "b", 0.0, 100, 300)] * (n2 - k2))


def test_length_control_saturated_two_cells_by_hand():
    # 4 battles with a longer (a wins 3: logit ln 3), 4 with a shorter (a wins 2: logit 0); d = ±0.5, sd 0.5, z = ±1.
    # Two cells, two parameters: β + γ = ln 3 and β − γ = 0, so β = γ = ln(3)/2.
    battles = lc_battles((3, 4), (2, 4))
    z, sd = length_feature(battles)
    assert sd == pytest.approx(0.5) and z.tolist() == [1.0] * 4 + [-1.0] * 4
    lc = fit_length_controlled(battles, prior=0.0)
    assert lc.length_coef == pytest.approx(math.log(3) / 2, abs=1e-8)
    assert lc.ratings["a"] - lc.ratings["b"] == pytest.approx(200 * math.log10(3), abs=1e-6)  # 95.42
    assert lc.ratings["a"] + lc.ratings["b"] == pytest.approx(2000.0)  # no anchor: centred on 1000
    assert lc.length_points == pytest.approx(200 * math.log10(3), abs=1e-6)
    # plain Bradley–Terry credits a with 5 of 8: 400·log10(5/3) = 88.74
    r = fit_ratings(battles, prior=0.0)
    assert r["a"] - r["b"] == pytest.approx(400 * math.log10(5 / 3), abs=1e-4)


def test_length_control_removes_a_win_bought_by_length():
    # a longer in 8 (wins 6: logit ln 3), shorter in 4 (wins 1: logit −ln 3): β = 0, all of it is length.
    # d = +0.5 (x8), −0.5 (x4): sd = sqrt(0.25 − (1/6)²) = sqrt(2)/3, so z = ±0.5/sd = ±1.06066 and γ = ln 3 / 1.06066
    battles = lc_battles((6, 8), (1, 4))
    lc = fit_length_controlled(battles, prior=0.0)
    assert lc.length_sd == pytest.approx(math.sqrt(2) / 3)
    assert lc.ratings["a"] == pytest.approx(lc.ratings["b"], abs=1e-6)
    assert lc.length_coef == pytest.approx(math.log(3) / (0.5 / (math.sqrt(2) / 3)), abs=1e-8)
    assert fit_ratings(battles, prior=0.0)["a"] - fit_ratings(battles, prior=0.0)["b"] == pytest.approx(
        400 * math.log10(7 / 5), abs=1e-4)  # plain BT: 7 of 12 → +58.45


def test_length_control_equals_bradley_terry_without_length_differences():
    battles = [Battle("sft", "x", 0.0, 50, 50)] * 3 + [Battle("sft", "x", 1.0, 50, 50)] + [Battle("x", "y", 0.5)] * 2
    lc = fit_length_controlled(battles)
    plain = fit_ratings(battles)
    assert lc.length_coef == 0.0 and lc.length_sd == 0.0
    for m in plain:
        assert lc.ratings[m] == pytest.approx(plain[m], abs=1e-4)  # same prior, same model: Newton = MM
    assert lc.ratings["sft"] == pytest.approx(1000.0)


def test_preliminary_below_the_minimum_no_rank_and_no_interval():
    votes = ([dict(left_policy="sft", right_policy="v1", winner="right", blind=True)] * 7
             + [dict(left_policy="v1", right_policy="sft", winner="right", blind=True)] * 5
             + [dict(left_policy="sft", right_policy="v2", winner="right", blind=True)] * 3)
    board = compute(votes, rounds=30, min_battles=10)
    by = {r["model"]: r for r in board.rows}
    assert by["v2"]["preliminary"] and by["v2"]["rank"] is None
    assert math.isnan(by["v2"]["lo"]) and math.isnan(by["v2"]["hi"]) and math.isnan(by["v2"]["lc_lo"])
    assert not by["v1"]["preliminary"] and not by["sft"]["preliminary"]
    assert [r["model"] for r in board.rows][-1] == "v2"  # after the ranked ones, though its rating is highest
    assert by["v2"]["rating"] > by["v1"]["rating"]
    assert sorted(r["rank"] for r in board.rows if r["rank"]) == [1, 2]
    assert by["v1"]["lo"] < by["v1"]["rating"] < by["v1"]["hi"]
    assert by["sft"]["anchor"] and by["sft"]["lo"] == by["sft"]["hi"] == 1000.0  # fixed by construction
    one = compute(votes[:1], rounds=30, min_battles=MIN_BATTLES)  # one vote: no zero-width "720 – 720"
    assert all(r["preliminary"] and r["rank"] is None and math.isnan(r["lo"]) for r in one.rows)


def test_position_bias_hand_computed():
    votes = ([{"winner": "left"}] * 6 + [{"winner": "right"}] * 2 + [{"winner": "tie"}, {"winner": "both_bad"}]
             + [{"winner": "right", "voided": True}] * 5)
    pb = position_bias(votes)
    assert (pb["left_wins"], pb["right_wins"], pb["ties"], pb["both_bad"], pb["decisive"]) == (6, 2, 1, 1, 8)
    assert pb["left_win_rate"] == 0.75
    # Wilson, z = 1.959964: centre (6 + z²/2)/(8 + z²) = 0.668898, half z/(8 + z²)·sqrt(6·2/8 + z²/4) = 0.259623
    assert pb["ci"] == pytest.approx((0.409275, 0.928521), abs=1e-6)
    assert pb["p_value"] == pytest.approx(74 / 256)  # 2·P(X ≤ 2), X ~ Bin(8, 1/2) = 2·37/256
    assert math.isnan(position_bias([{"winner": "tie"}])["left_win_rate"])
    board = compute([dict(v, left_policy="sft", right_policy="v1") for v in votes], rounds=10)
    assert board.position["left_wins"] == 6 and board.position["right_wins"] == 2  # voided ones left out


def test_lengths_come_from_the_assistant_messages():
    v = dict(left_policy="sft", right_policy="v1", winner="left", blind=True,
             left_messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "abc"}],
             right_messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "abcdefg"}])
    (bt,) = battles_from_votes([v])
    assert (bt.len_a, bt.len_b) == (3.0, 7.0)
    assert battles_from_votes([dict(v, voided=True)]) == []


def test_per_category_boards_and_the_win_rate_picture(tmp_path):
    from rlhf_demo.leaderboard import compute_by_category, win_rate_figure

    votes = ([dict(left_policy="sft", right_policy="v1", winner="right", blind=True, category="harmful")] * 4
             + [dict(left_policy="sft", right_policy="v1", winner="left", blind=True, category="ordinary")] * 3
             + [dict(left_policy="v1", right_policy="v2", winner="tie", blind=True)])
    boards = compute_by_category(votes, rounds=5)
    assert list(boards) == ["harmful", "ordinary", "uncategorised"]
    assert boards["harmful"].n_votes == 4 and boards["harmful"].rows[0]["model"] == "v1"
    assert boards["ordinary"].rows[0]["model"] == "sft"
    fig = win_rate_figure(compute(votes, rounds=5))
    (ax, _colorbar) = fig.axes
    img = ax.images[0].get_array()
    assert img.shape == (3, 3) and img[0, 1] == pytest.approx(3 / 7)  # sft beat v1 in 3 of 7
    assert bool(img.mask[0, 2])  # sft and v2 never met: grey
    assert {t.get_text() for t in ax.texts} >= {"43%\n(7)", "57%\n(7)", "50%\n(1)"}
    fig.savefig(tmp_path / "rates.png")
    assert (tmp_path / "rates.png").stat().st_size > 1000
    assert win_rate_figure(compute([], rounds=5)) is None


def test_votes_stored_from_pool_prompts_land_in_their_category():
    """The store keeps a pool prompt's category in the vote's ``prompts`` list (the first turn decides); the
    categories are spelt as the prompt pools spell them; a typed prompt has none."""
    from rlhf_demo.leaderboard import CATEGORIES, compute_by_category, vote_category
    from rlhf_demo.prompt_pool import CATEGORIES as POOL

    assert CATEGORIES == POOL == ("harmful", "risky-safe", "ordinary")
    pool = lambda cat: [{"turn": 2, "source": "typed", "category": None},  # noqa: E731
                        {"turn": 1, "source": "suggested", "category": cat, "lang": "en", "ref": "x"}]
    base = dict(left_policy="sft", right_policy="v1", blind=True)
    votes = ([dict(base, winner="right", prompts=pool("risky-safe"))] * 2
             + [dict(base, winner="left", prompts=pool("harmful"))]
             + [dict(base, winner="tie", prompts=[{"turn": 1, "source": "typed", "category": None}]),
                dict(base, winner="tie", prompts=None)])
    assert [vote_category(v) for v in votes] == ["risky-safe", "risky-safe", "harmful", None, None]
    assert vote_category(dict(base, category="ordinary", prompts=pool("harmful"))) == "ordinary"  # its own field wins
    boards = compute_by_category(votes, rounds=5)
    assert list(boards) == ["harmful", "risky-safe", "uncategorised"]
    assert (boards["risky-safe"].n_votes, boards["harmful"].n_votes, boards["uncategorised"].n_votes) == (2, 1, 2)
