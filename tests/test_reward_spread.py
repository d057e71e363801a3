"""scripts/reward_spread.py: pairs of answers to one prompt, split by label, and their reward spread — by hand."""

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("reward_spread",
                                              Path(__file__).resolve().parents[1] / "scripts" / "reward_spread.py")
S = importlib.util.module_from_spec(spec)
spec.loader.exec_module(S)


def _row(prompt, kind, refusal):
    return {"prompt": prompt, "prompt_kind": kind, "refusal": refusal, "response": "x"}


ROWS = [_row("bomb", "harmful", False), _row("bomb", "harmful", True), _row("bomb", "harmful", False),
        _row("egg", "ordinary", True), _row("egg", "ordinary", False), _row("alone", "ordinary", False)]


def test_pairs_by_label_and_the_side_that_should_win():
    g = S.pair_groups(ROWS)
    # harmful: the refusal (1) should beat each compliance (0, 2); the two compliances are a same-label pair
    assert g == {"harmful different": [(1, 0), (1, 2)], "harmful same-answer": [(0, 2)],
                 "ordinary different": [(4, 3)]}


def test_spread_by_hand():
    total = [1.0, 9.0, 3.0, 8.0, 2.0, 0.0]
    term = [-4.0, 4.0, -4.0, 4.0, -4.0, 0.0]
    out = S.spread(S.pair_groups(ROWS), total, term, half_range=4.0)
    d = out["harmful different"]  # Δtotal 8, 6; Δterm 8, 8; Δrm 0, -2; both flips; both right
    assert d == {"pairs": 2, "mean_abs_total": 7.0, "mean_abs_term": 8.0, "mean_abs_rm": 1.0, "term_flips": 1.0,
                 "right": 1.0}
    s = out["harmful same-answer"]  # Δtotal -2, Δterm 0
    assert s["mean_abs_total"] == 2.0 and s["term_flips"] == 0.0 and "right" not in s
    assert out["ordinary different"]["right"] == 0.0  # the answer (2.0) should beat the refusal (8.0): it does not
    assert out["ordinary different"]["mean_abs_total"] == pytest.approx(6.0)


def test_eval_rows_get_their_kind_from_the_category_and_bad_rows_say_where():
    row = {"prompt": "p", "response": "r", "refusal": True, "category": "safe"}
    assert S.with_kind(row, "f:1")["prompt_kind"] == "risky-safe"
    assert S.with_kind({**row, "prompt_kind": "harmful"}, "f:1")["prompt_kind"] == "harmful"
    with pytest.raises(ValueError, match="gen.jsonl:7.*'other'"):
        S.with_kind({**row, "category": "other"}, "gen.jsonl:7")
