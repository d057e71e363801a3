"""scripts/ppo_run_summary.py: the reward rise in units of its standard error, by hand."""

import importlib.util
import math
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("ppo_run_summary",
                                              Path(__file__).resolve().parents[1] / "scripts" / "ppo_run_summary.py")
S = importlib.util.module_from_spec(spec)
spec.loader.exec_module(S)


def test_mean_se_by_hand():
    m, se = S.mean_se([1.0, 2.0, 3.0])
    assert m == 2.0 and se == pytest.approx(1.0 / math.sqrt(3))
    assert S.mean_se([5.0]) == (5.0, 0.0)


def test_summary_of_a_rising_run():
    rows = [{"step": 0, "val/score": 1.0, "train/readout_score": 0.5}]
    rewards = [9, 9, 1, 2, 3, 5, 6, 7]  # 2 warm-up iterations, then first window [1, 2, 3], last [5, 6, 7]
    evs = [0.0, 0.0, -0.2, 0.1, 0.4, 0.5, 0.6, 0.2]
    for i, (r, e) in enumerate(zip(rewards, evs), 1):
        rows.append({"step": i, "reward/score_mean": float(r), "value/explained_variance": e,
                     "policy/approx_kl": 0.01})
    s = S.summarize(rows, warmup=2, window=3)
    assert s["reward_first"]["mean"] == 2.0 and s["reward_last"]["mean"] == 6.0 and s["reward_rise"] == 4.0
    se = math.sqrt(2 * (1.0 / math.sqrt(3)) ** 2)
    assert s["rise_in_se"] == pytest.approx(4.0 / se, abs=0.01)
    ev = s["explained_variance_after_warmup"]
    # after warm-up: [-0.2, 0.1, 0.4, 0.5, 0.6, 0.2] -> median (0.2 + 0.4) / 2, 3 of 6 above 0.3, last three 0.433
    assert ev["median"] == pytest.approx(0.3) and ev["share_above_0.3"] == 0.5
    assert ev["mean_last_window"] == pytest.approx(1.3 / 3, abs=1e-4)
    assert s["validation"] == [{"step": 0, "val/score": 1.0, "train/readout_score": 0.5}]
    assert s["readout"] == [{"step": 0, "score": 0.5}]
