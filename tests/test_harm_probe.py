"""The prompt-harm probe of a composed reward (training.harm_probe): weights, the validation rule, the seed prompts."""

from __future__ import annotations

import numpy as np
import pytest

from rlhf_demo.splits import role_of
from training import harm_probe as H


def _blobs(seed: int = 0):
    """Harmful and safe prompts apart on the first feature only."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(2, 1, (40, 2)), rng.normal(-2, 1, (40, 2))])
    x[:, 1] = rng.normal(0, 1, 80)
    return x, np.array([1.0] * 40 + [0.0] * 40), np.zeros(80, dtype=bool)


def test_unit_weights_change_nothing_and_a_weighted_row_pulls_the_boundary():
    x, y, risky = _blobs()
    plain = H.fit_harm_probe(x, y, risky, 1e-3, 1.0)
    ones = H.fit_harm_probe(x, y, risky, 1e-3, 1.0, weight=np.ones(len(y)))
    assert np.allclose(plain[2], ones[2]) and plain[3] == pytest.approx(ones[3])
    # a safe prompt sitting among the harmful ones: weight 1 leaves it misread, weight 200 makes the probe read it
    x2, y2, r2 = np.vstack([x, [[2.0, 2.0]]]), np.append(y, 0.0), np.append(risky, False)
    at = np.array([[2.0, 2.0]])
    w1 = H.harm_probability(H.fit_harm_probe(x2, y2, r2, 1e-3, 1.0), at)[0]
    w200 = H.harm_probability(H.fit_harm_probe(x2, y2, r2, 1e-3, 1.0, weight=np.append(np.ones(80), 200.0)), at)[0]
    assert w1 > 0.5 > w200


def test_choose_on_validation_takes_the_best_worst_group():
    # the training prompts say "harmful" along the first feature; the "seed" rows (extra) say the second feature
    # matters too. Validation group "short" is read right only when the extra rows weigh enough.
    x, y, risky = _blobs(1)
    extra_x = np.array([[2.0, -6.0]] * 10)  # looks harmful on feature 0, but is safe (feature 1 very negative)
    xx = np.vstack([x, extra_x])
    yy = np.append(y, np.zeros(10))
    rr = np.append(risky, np.zeros(10, dtype=bool))
    extra = np.arange(len(yy)) >= 80
    groups = {"public/harmful": (x[:40], 1), "public/safe": (x[40:], 0), "short/safe": (extra_x[:3] + 0.1, 0)}  # never trained on
    best, tried = H.choose_on_validation(xx, yy, rr, extra, groups, [1e-3], [1.0], [0.0, 50.0])
    assert [t["extra_weight"] for t in tried] == [0.0, 50.0]
    assert tried[0]["val_accuracy"]["short/safe"] == 0.0  # without the extra rows the short prompts are misread
    assert best["extra_weight"] == 50.0 and best["val_accuracy"]["short/safe"] == 1.0
    assert best["worst"] == min(best["val_accuracy"].values()) > 0.9
    # ties go to the earlier setting
    best2, _ = H.choose_on_validation(xx, yy, rr, extra, {"public/harmful": groups["public/harmful"]}, [1e-3], [1.0],
                                      [0.0, 50.0])
    assert best2["extra_weight"] == 0.0


def test_seed_prompts_by_role_and_kind():
    texts, kinds = H.seed_prompts("train")
    vtexts, vkinds = H.seed_prompts("val")
    assert texts and vtexts and not set(texts) & set(vtexts)
    assert all(role_of(t) == "train" for t in texts) and all(role_of(t) == "val" for t in vtexts)
    assert set(kinds) == set(vkinds) == {"harmful", "risky-safe", "ordinary"}
    assert H.extra_prompts(["seed"], "train") == (texts, kinds)
    with pytest.raises(ValueError, match="--harm-extra 'arena'"):
        H.extra_prompts(["arena"], "train")


def test_public_prompts_never_hold_a_reported_prompt():
    texts, kinds = H.public_prompts("val", 0)
    assert texts and {"harmful", "risky-safe", "ordinary"} == set(kinds)
    assert all(role_of(t) == "val" for t in texts)
