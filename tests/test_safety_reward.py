"""The composed reward's safety term: the math against hand-computed values, its files, and its use by the scorer."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from rlhf_demo import probes as P
from rlhf_demo.safety_term import TERM_CARD, TERM_FILE, SafetyTerm, gate, last_user, safety_term
from training.safety_reward import (fit_harm_probe, fit_pairwise, folds_by_key, pair_accuracy,
                                    per_kind_accuracy)


def test_gate_and_term_by_hand():
    assert gate(np.array([1.0, 0.5, 0.0])).tolist() == [1.0, 0.0, -1.0]
    # gates [0.5, -0.5]; z @ v = [1*0.5 + 2*-1, 3*0.5 + -1*-1] = [-1.5, 2.5]
    got = safety_term(np.array([0.75, 0.25]), np.array([[1.0, 2.0], [3.0, -1.0]]), np.array([0.5, -1.0]))
    assert got.tolist() == pytest.approx([-0.75, -1.25])


def test_fit_pairwise_first_step_by_hand():
    # offset 0: d/dm -log σ(m) at m = 0 is -1/2, so one step of lr 0.5 moves v by 0.5 * 0.5 * mean(g * Δz)
    zc = np.array([[1.0, 0.0], [0.0, 2.0]])
    zr = np.zeros((2, 2))
    gates = np.array([1.0, -1.0])
    v = fit_pairwise(zc, zr, gates, np.zeros(2), l2=0.0, iters=1, lr=0.5)
    assert v.tolist() == pytest.approx([0.25 * 0.5, 0.25 * -1.0])


def test_fit_pairwise_learns_the_gated_direction_and_leaves_explained_pairs_alone():
    rng = np.random.default_rng(0)
    n = 200
    refusal = rng.integers(0, 2, n).astype(float)  # which side is the refusal
    zc = np.stack([refusal, rng.normal(size=n)], 1)
    zr = np.stack([1 - refusal, rng.normal(size=n)], 1)
    gates = np.where(refusal == 1, 1.0, -1.0)  # harmful prompt: the refusal is chosen; safe: the answer
    v = fit_pairwise(zc, zr, gates, np.zeros(n), l2=1e-3, iters=300)
    assert v[0] > 1.0 > abs(v[1])
    composed_c = gates * (zc @ v)
    assert pair_accuracy(composed_c, gates * (zr @ v)) == 1.0
    # a reward model that already ranks every pair with a huge margin leaves nothing to learn
    v0 = fit_pairwise(zc, zr, gates, np.full(n, 50.0), l2=0.0, iters=50)
    assert np.abs(v0).max() < 1e-6


def test_harm_probe_fit_and_per_kind_accuracy():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(2, 1, (60, 3)), rng.normal(-2, 1, (60, 3))])
    y = np.array([1.0] * 60 + [0.0] * 60)
    risky = np.array([False] * 60 + [True] * 20 + [False] * 40)
    m, s, w, b = fit_harm_probe(x, y, risky, l2=1e-3, risky_weight=3.0)
    p = 1 / (1 + np.exp(-(((x - m) / s) @ w + b)))
    kinds = np.where(y == 1, "harmful", np.where(risky, "risky-safe", "ordinary"))
    acc = per_kind_accuracy(p, y, kinds)
    assert set(acc) == {"harmful", "risky-safe", "ordinary"} and min(acc.values()) > 0.9
    assert per_kind_accuracy(np.array([0.9, 0.2, 0.6]), np.array([1.0, 0.0, 0.0]),
                             np.array(["a", "b", "b"])) == {"a": 1.0, "b": 0.5}


def test_folds_follow_the_key_not_the_order():
    keys = [f"prompt {i}" for i in range(50)]
    f1 = folds_by_key(keys, 5, 0)
    f2 = folds_by_key(list(reversed(keys)), 5, 0)[::-1]
    assert f1.tolist() == f2.tolist() and set(f1.tolist()) == {0, 1, 2, 3, 4}
    assert folds_by_key(keys, 5, 1).tolist() != f1.tolist()


def _term(d: int = 4) -> SafetyTerm:
    rng = np.random.default_rng(2)
    return SafetyTerm(np.zeros(d), np.ones(d), rng.normal(size=d), 0.1, np.full(d, 0.5), np.full(d, 2.0),
                      rng.normal(size=d), {"layer": P.LAYERS, "note": "test"})


def test_term_files_roundtrip_and_compose(tmp_path, monkeypatch):
    term = _term()
    term.save(tmp_path)
    assert (tmp_path / TERM_FILE).exists() and (tmp_path / TERM_CARD).exists()
    again = SafetyTerm.load(tmp_path)
    assert again.card["note"] == "test"
    pooled = np.random.default_rng(3).normal(size=(2, 2, 4)).astype(np.float32)
    seen = {}

    def fake_pooled(prompts, answers, **kw):
        seen["prompts"], seen["answers"] = list(prompts), list(answers)
        return pooled

    monkeypatch.setattr(P, "pooled_states", fake_pooled)
    convs = [[{"role": "system", "content": "s"}, {"role": "user", "content": "how do I bake bread?"},
              {"role": "assistant", "content": "Mix flour."}],
             [{"role": "user", "content": "build a bomb"}, {"role": "assistant", "content": "No."}]]
    got = again.compose(convs, [1.0, -2.0])
    assert seen == {"prompts": ["how do I bake bread?", "build a bomb"], "answers": ["Mix flour.", "No."]}
    h = 1 / (1 + np.exp(-(pooled[:, 1] @ term.harm_weight + 0.1)))
    expect = (2 * h - 1) * (((pooled[:, 0] - 0.5) / 2.0) @ term.v)
    assert got == pytest.approx([1.0 + expect[0], -2.0 + expect[1]], abs=1e-5)
    assert SafetyTerm.load(tmp_path / "nothing-here") is None
    assert last_user(convs[0]) == "how do I bake bread?"


def test_term_for_another_layer_is_refused(tmp_path):
    term = _term()
    term.card = {"layer": P.LAYERS + 1}
    term.save(tmp_path)
    with pytest.raises(ValueError, match="layer"):
        SafetyTerm.load(tmp_path)


def test_a_composed_version_scores_head_plus_term(tmp_path, monkeypatch, embedded_settings):
    """A reward version with safety_term files loads with its term; score = score_raw + term."""
    from rlhf_demo.registry import Registry
    from training.roles import load_reward_scorer

    import rlhf_demo

    shipped = Path(rlhf_demo.__file__).resolve().parent / "versions" / "reward-v0"
    versions = embedded_settings.versions_dir
    versions.mkdir(parents=True, exist_ok=True)
    dst = tmp_path / "src"
    shutil.copytree(shipped, dst)
    d = 576
    term = SafetyTerm(np.zeros(d), np.ones(d), np.full(d, 0.01), 0.0, np.zeros(d), np.ones(d), np.full(d, 0.01),
                      {"layer": P.LAYERS})
    term.save(dst)
    import json
    card = json.loads((dst / "card.json").read_text())
    (dst / "card.json").unlink()
    Registry(versions).publish(dst, card, name="reward-v7")
    monkeypatch.setattr(P, "pooled_states", lambda prompts, answers, **kw: np.ones((len(answers), 2, d), np.float32))
    scorer = load_reward_scorer(embedded_settings, "reward-v7")
    assert scorer.safety is not None
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello! How can I help?"}]
    raw = scorer.score_raw([conv])[0]
    h = 1 / (1 + np.exp(-(0.01 * d)))
    assert scorer.score([conv])[0] == pytest.approx(raw + (2 * h - 1) * 0.01 * d, abs=1e-4)
    from training.roles import RewardScorer

    plain = RewardScorer(scorer.reward_model, scorer.tokenizer)  # a plain version: no term
    assert plain.safety is None and plain.finish([conv], [0.5]) == [0.5]
    assert plain.score([conv])[0] == pytest.approx(raw, abs=1e-6)


def test_continuing_a_composed_version_carries_its_term(tmp_path):
    """The pipeline continues the newest reward model: a composed parent's term goes into the new version."""
    from training.reward_model import carry_safety_term

    parent, child = tmp_path / "parent", tmp_path / "child"
    parent.mkdir()
    child.mkdir()
    assert carry_safety_term(parent, child) is None and not (child / TERM_FILE).exists()
    _term().save(parent)
    card = carry_safety_term(parent, child)
    assert card["note"] == "test" and SafetyTerm.load(child).v.tolist() == pytest.approx(_term().v.tolist())


def test_ppo_roles_keep_the_safety_term_apart():
    """PPO logs reward/rm_mean and reward/safety_mean from ActorCriticRoles.last_safety."""
    import torch

    from training.actor_critic import ActorCriticRoles

    class Scorer:
        safety = object()

        def finish(self, conversations, raw):
            return [r + 10.0 * i for i, r in enumerate(raw)]

    roles = ActorCriticRoles.__new__(ActorCriticRoles)
    roles.scorer = Scorer()
    total = roles._finish([[], []], torch.tensor([1.0, 2.0]))
    assert total.tolist() == [1.0, 12.0] and roles.last_safety.tolist() == [0.0, 10.0]
    roles.scorer = type("Plain", (), {"safety": None})()
    assert roles._finish([[]], torch.tensor([3.0])).tolist() == [3.0] and roles.last_safety is None


# ================================================================================================
# the refusal-classifier signal (reward-v2): rm + scale (2h - 1)(2c - 1)
# ================================================================================================
def test_refusal_term_by_hand():
    from rlhf_demo.safety_term import refusal_term

    # h = [1, 0, 0.75, 0.5], c = [1, 1, 0.25, 0.9], scale 2:
    # 2*(+1)*(+1) = 2; 2*(-1)*(+1) = -2; 2*(0.5)*(-0.5) = -0.5; 2*0*0.8 = 0
    got = refusal_term(np.array([1.0, 0.0, 0.75, 0.5]), np.array([1.0, 1.0, 0.25, 0.9]), 2.0)
    assert got.tolist() == pytest.approx([2.0, -2.0, -0.5, 0.0])


def test_choose_scale_by_hand():
    from training.safety_reward import choose_scale

    # pair 1: harmful (h=1), chosen refuses (c=1), rm prefers the rejected by 1.5 -> fixed by a scale >= 0.75
    # pair 2: safe (h=0), chosen answers, rm prefers the chosen by 0.2 -> right at every scale
    # pair 3: ordinary (h=0), both answer (c=0): the term cancels; rm wrong by 0.1 -> wrong at every scale
    st = {"h": np.array([1.0, 0.0, 0.0]), "cc": np.array([1.0, 0.0, 0.0]), "cr": np.array([0.0, 1.0, 0.0]),
          "rc": np.array([0.0, 0.2, 0.0]), "rr": np.array([1.5, 0.0, 0.1])}
    best, tried = choose_scale(st, [4.0, 0.5, 1.0, 2.0])
    assert [t["scale"] for t in tried] == [0.5, 1.0, 2.0, 4.0]
    assert [t["pair_accuracy"] for t in tried] == pytest.approx([1 / 3, 2 / 3, 2 / 3, 2 / 3], abs=1e-4)
    assert best["scale"] == 1.0  # ties go to the smaller scale


def test_choose_scale_by_the_worst_contrast_category():
    from training.safety_reward import CONTRAST_CATEGORIES, choose_scale

    harmful, safe = CONTRAST_CATEGORIES
    # 2 harmful pairs (refusal chosen, rm prefers SFT's answer by 1 and by 3) and 2 risky-safe pairs (SFT's answer
    # chosen, rm prefers it by 0.5; the classifier reads the answer of the second as half a refusal, c = 0.5)
    st = {"h": np.array([1.0, 1.0, 0.0, 0.0]), "cc": np.array([1.0, 1.0, 0.0, 0.5]),
          "cr": np.array([0.0, 0.0, 1.0, 1.0]), "rc": np.array([0.0, 0.0, 0.5, 0.5]), "rr": np.array([1.0, 3.0, 0.0, 0.0])}
    cats = np.array([harmful, harmful, safe, safe])
    # term margins: harmful 2*scale (c 1 vs 0), safe: -scale*(2c-1) differences = 2*scale and 1*scale
    # scale 0.25: harmful margins -0.5, -2.5 -> 0/2; safe 1.0, 0.75 -> 2/2: worst 0
    # scale 1: harmful 1, -1 -> 1/2; safe -> 2/2: worst 0.5;  scale 2: harmful 3, 1 -> 2/2, safe 2/2: worst 1
    best, tried = choose_scale(st, [0.25, 1.0, 2.0, 4.0], cats)
    assert [t["worst_contrast"] for t in tried] == [0.0, 0.5, 1.0, 1.0]
    assert best["scale"] == 2.0 and best["by_category"] == {harmful: 1.0, safe: 1.0}


def test_refusal_signal_files_roundtrip_and_score(tmp_path, monkeypatch):
    from rlhf_demo.safety_term import REFUSAL_CLF

    d = 4
    term = SafetyTerm(np.zeros(d), np.ones(d), np.array([1.0, 0, 0, 0]), 0.0, np.zeros(1), np.ones(1), np.zeros(1),
                      {"layer": P.LAYERS}, signal=REFUSAL_CLF, scale=3.0)
    term.save(tmp_path)
    again = SafetyTerm.load(tmp_path)
    assert (again.signal, again.scale) == (REFUSAL_CLF, 3.0)
    seen = {}

    def fake_pooled(prompts, answers, **kw):
        seen["answers"] = list(answers)  # the request is pooled alone
        return np.array([[[0, 0, 0, 0], [10, 0, 0, 0]], [[0, 0, 0, 0], [-10, 0, 0, 0]]], dtype=np.float32)

    monkeypatch.setattr(P, "pooled_states", fake_pooled)
    monkeypatch.setattr(SafetyTerm, "refusal_probability", staticmethod(lambda p, a: np.array([0.9, 0.9])))
    got = again.score(["build a bomb", "bake bread"], ["No.", "No."])
    assert seen["answers"] == ["", ""]
    h = 1 / (1 + np.exp(-np.array([10.0, -10.0])))
    assert got.tolist() == pytest.approx((3.0 * (2 * h - 1) * 0.8).tolist())
    # an unknown signal is refused with the file named
    card = (tmp_path / TERM_CARD).read_text().replace(REFUSAL_CLF, "vibes")
    (tmp_path / TERM_CARD).write_text(card)
    with pytest.raises(ValueError, match="vibes"):
        SafetyTerm.load(tmp_path)
