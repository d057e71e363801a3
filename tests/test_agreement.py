"""Rater agreement: Cohen's and Fleiss' kappa with intervals, against hand-computed values, and the overlap
set built from stored votes (sides swapped between raters)."""

import math

import pytest

from rlhf_demo.agreement import agreement_report, overlap_items, overlap_key, vote_label
from rlhf_demo.stats import cohen_kappa, fleiss_kappa, wilson_interval

Z = 1.959963984540054


def test_cohen_kappa_interval_by_hand():
    # 10 items: both yes 3, both no 5, one each way: p_o = 0.8, p_e = 0.4·0.4 + 0.6·0.6 = 0.52, κ = 0.28/0.48
    a = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    b = [1, 1, 1, 0, 1, 0, 0, 0, 0, 0]
    k = cohen_kappa(a, b)
    assert k["kappa"] == pytest.approx(0.28 / 0.48)
    # Wilson(8 of 10): centre (8 + z²/2)/(10 + z²) = 0.716740, half z/(10 + z²)·sqrt(8·2/10 + z²/4) = 0.226578
    # → p_o in [0.490162, 0.943318] → κ in [(0.490162 − 0.52)/0.48, (0.943318 − 0.52)/0.48] = [−0.062162, 0.881912]
    centre, half = (8 + Z * Z / 2) / (10 + Z * Z), Z / (10 + Z * Z) * math.sqrt(1.6 + Z * Z / 4)
    assert (centre, half) == pytest.approx((0.716740, 0.226578), abs=1e-6)
    assert k["ci"] == pytest.approx([-0.062162, 0.881912], abs=1e-6)


def test_cohen_kappa_categorical_labels():
    # 3 categories, 6 items: agree on 4 → p_o = 24/36; a: x3 y2 z1, b: x3 y3 z0 → p_e = (3·3 + 2·3 + 1·0)/36 = 15/36
    a = ["x", "x", "x", "y", "y", "z"]
    b = ["x", "x", "y", "y", "y", "x"]
    k = cohen_kappa(a, b)
    assert k["agreement"] == pytest.approx(4 / 6) and k["expected"] == pytest.approx(15 / 36)
    assert k["kappa"] == pytest.approx((24 - 15) / (36 - 15))  # = 3/7
    assert math.isnan(cohen_kappa(["x"] * 3, ["x"] * 3)["kappa"])  # p_e = 1: undefined
    full = cohen_kappa(["x", "y"] * 4, ["x", "y"] * 4)
    assert full["kappa"] == 1.0 and full["ci"][0] < 1.0  # never a zero-width interval


def test_fleiss_kappa_small_tables_by_hand():
    # 3 raters, 3 items: [L L L] P=1, [L L R] P=1/3, [R R L] P=1/3 → P̄ = 5/9; p_L = 2/3, p_R = 1/3 → P_e = 5/9: κ = 0
    k = fleiss_kappa([["L", "L", "L"], ["L", "L", "R"], ["R", "R", "L"]], n_resamples=0)
    assert k["agreement"] == pytest.approx(5 / 9) and k["expected"] == pytest.approx(5 / 9)
    assert k["kappa"] == pytest.approx(0.0, abs=1e-12)
    # + [R R R]: P̄ = (1 + 1/3 + 1/3 + 1)/4 = 2/3, p_L = p_R = 1/2 → P_e = 1/2: κ = (2/3 − 1/2)/(1/2) = 1/3
    k = fleiss_kappa([["L", "L", "L"], ["L", "L", "R"], ["R", "R", "L"], {"R": 3}], n_resamples=0)
    assert k["kappa"] == pytest.approx(1 / 3)
    # two raters with equal marginals: Fleiss (Scott's pi) equals Cohen
    a = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    b = [1, 1, 1, 0, 1, 0, 0, 0, 0, 0]
    assert fleiss_kappa(list(zip(a, b)), n_resamples=0)["kappa"] == pytest.approx(cohen_kappa(a, b)["kappa"])
    # items with one rating are left out; none with two is an error
    assert fleiss_kappa([["L"], ["L", "L"], ["R", "R"]], n_resamples=0)["n_items"] == 2
    with pytest.raises(ValueError):
        fleiss_kappa([["L"]])


def test_fleiss_kappa_published_example():
    # Fleiss (1971) as tabulated on Wikipedia: 10 subjects, 14 raters, 5 categories: P̄ = 0.378, P_e = 0.213, κ = 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    k = fleiss_kappa([{c: n for c, n in enumerate(row) if n} for row in table], n_resamples=300, seed=1)
    assert k["agreement"] == pytest.approx(0.378, abs=5e-4) and k["expected"] == pytest.approx(0.213, abs=5e-4)
    assert k["kappa"] == pytest.approx(0.210, abs=5e-4)
    lo, hi = k["ci"]
    assert lo < k["kappa"] < hi and hi - lo < 0.5
    assert fleiss_kappa([{c: n for c, n in enumerate(row) if n} for row in table], n_resamples=300,
                        seed=1)["ci"] == k["ci"]  # seeded


# -- the overlap set from votes -----------------------------------------------------------------------------
SIDES = {"sft": "Sure, here is how.", "v1": "I can't help with that."}
LABELS = ["v1", "v1", "sft", "tie", "v1", "sft", "v1", "v1"]  # what u1, u2, u3 say about items 0..7
CONTRARIAN = ["sft", "sft", "v1", "v1", "sft", "v1", "sft", "tie"]  # u4


def vote_on(item: int, user: str, label: str, swapped: bool) -> dict:
    prompt = {"role": "user", "content": f"question {item}"}
    msgs = {p: [prompt, {"role": "assistant", "content": f"{a} ({item})"}] for p, a in SIDES.items()}
    left, right = ("v1", "sft") if swapped else ("sft", "v1")
    winner = label if label in ("tie", "both_bad") else ("left" if label == left else "right")
    return {"id": hash((item, user)), "user": user, "left_policy": left, "right_policy": right, "winner": winner,
            "left_messages": msgs[left], "right_messages": msgs[right], "blind": True}


def seeded_overlap_votes() -> list[dict]:
    votes = []
    for i in range(8):
        for u, (user, labels) in enumerate([("u1", LABELS), ("u2", LABELS), ("u3", LABELS), ("u4", CONTRARIAN)]):
            votes.append(vote_on(i, user, labels[i], swapped=(i + u) % 2 == 1))
    votes.append(vote_on(99, "u1", "v1", False))  # voted by one user only: not an overlap item
    votes.append(dict(vote_on(0, "u5", "sft", False), voided=True))  # voided: left out
    return votes


def test_labels_and_keys_ignore_the_side_swap():
    a, b = vote_on(3, "x", "v1", swapped=False), vote_on(3, "y", "v1", swapped=True)
    assert a["winner"] == "right" and b["winner"] == "left"
    assert vote_label(a) == vote_label(b) == "v1" and overlap_key(a) == overlap_key(b)
    assert overlap_key(a) != overlap_key(vote_on(4, "x", "v1", False))
    items = overlap_items(seeded_overlap_votes())
    assert len(items) == 8 and all(set(x) == {"u1", "u2", "u3", "u4"} for x in items.values())


def test_agreement_report_matches_hand_computed_values():
    rep = agreement_report(seeded_overlap_votes(), n_resamples=200)
    assert rep["items"] == 8 and rep["votes"] == 32
    # every item: 3 raters on one label, 1 on another → P_i = (3·2)/(4·3) = 1/2, P̄ = 1/2.
    # all 32 ratings: v1 15 + 3 = 18, sft 6 + 4 = 10, tie 3 + 1 = 4 → P_e = (18² + 10² + 4²)/32² = 440/1024
    # κ = (512 − 440)/(1024 − 440) = 72/584 = 9/73
    f = rep["fleiss"]
    assert f["agreement"] == pytest.approx(0.5) and f["expected"] == pytest.approx(440 / 1024)
    assert f["kappa"] == pytest.approx(9 / 73)
    u1, u4 = rep["users"]["u1"], rep["users"]["u4"]
    # u1 against the others' majority (u2, u3 outvote u4 on every item): 8 of 8
    assert (u1["agree"], u1["items"], u1["flagged"]) == (8, 8, False)
    # κ = 1; p_e = (5·5 + 2·2 + 1·1)/64 = 30/64; Wilson(8 of 8) lower = 8/(8 + z²) = 0.675592 → (0.675592 − 30/64)/(34/64)
    assert u1["kappa"]["kappa"] == pytest.approx(1.0)
    assert u1["kappa"]["ci"][0] == pytest.approx((8 / (8 + Z * Z) - 30 / 64) / (34 / 64)) == pytest.approx(0.389350,
                                                                                                            abs=1e-6)
    # u4 agrees with no one: 0 of 8; u4 x4 sft, x3 v1, x1 tie against the majority x5 v1, x2 sft, x1 tie:
    # p_e = (4·2 + 3·5 + 1·1)/64 = 24/64, κ = (0 − 0.375)/0.625 = −0.6; Wilson(0 of 8) upper = z²/(8 + z²) = 0.324408
    assert (u4["agree"], u4["items"]) == (0, 8)
    assert u4["kappa"]["kappa"] == pytest.approx(-0.6)
    assert u4["ci"] == pytest.approx([0.0, Z * Z / (8 + Z * Z)]) and u4["ci"][1] == pytest.approx(0.324408, abs=1e-6)
    assert u4["others_rate"] == pytest.approx(1.0)  # u1..u3: 24 of 24
    assert u4["flagged"] is True  # 0.3244 < 1.0: an outlier voter
    assert wilson_interval(0, 8)[1] == pytest.approx(u4["ci"][1])
    assert "u5" not in rep["users"]  # only a voided vote


def test_few_items_are_never_flagged_and_no_overlap_is_empty():
    votes = [v for v in seeded_overlap_votes() if v["left_messages"][0]["content"] in ("question 0", "question 1")]
    rep = agreement_report(votes, n_resamples=50)
    assert rep["users"]["u4"]["items"] == 2 and rep["users"]["u4"]["flagged"] is False  # < min_items
    assert agreement_report([vote_on(1, "a", "v1", False)]) == {"items": 0, "votes": 0, "fleiss": None, "users": {}}
