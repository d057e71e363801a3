"""Summarise a PPO run's metrics.jsonl: does the reward rise beyond its noise, does the critic explain it?

    python scripts/ppo_run_summary.py runs/runs/ppo-.../metrics.jsonl --warmup 6 [--window 10] [--json OUT]

Prints the mean training reward of the first and last ``--window`` policy iterations (after the critic
warm-up) with their standard errors and the rise in units of its standard error; explained variance after
the warm-up (median, share of iterations > 0.3, mean of the last window); the readout (the training reward of
greedy answers to the same fixed training prompts, at each validation: the learning curve without the noise of which
prompts an iteration drew); approx-KL / clip fraction; and every validation row. Pure reading: it trains nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhf_demo.metrics_log import read_metrics  # noqa: E402


def mean_se(xs: list[float]) -> tuple[float, float]:
    """Mean and its standard error (0 for fewer than two values)."""
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, 0.0
    return m, statistics.stdev(xs) / math.sqrt(len(xs))


def summarize(rows: list[dict], warmup: int, window: int) -> dict:
    train = [r for r in rows if "reward/score_mean" in r]
    policy = [r for r in train if r["step"] > warmup]
    if len(policy) < 2 * window:
        window = max(1, len(policy) // 2)
    first = [r["reward/score_mean"] for r in policy[:window]]
    last = [r["reward/score_mean"] for r in policy[-window:]]
    (m0, s0), (m1, s1) = mean_se(first), mean_se(last)
    se = math.sqrt(s0 ** 2 + s1 ** 2)
    ev = [r["value/explained_variance"] for r in policy if r.get("value/explained_variance") is not None]
    out = {
        "iterations": len(train), "warmup": warmup, "window": window,
        "reward_first": {"mean": round(m0, 4), "se": round(s0, 4), "steps": [policy[0]["step"], policy[window - 1]["step"]]},
        "reward_last": {"mean": round(m1, 4), "se": round(s1, 4), "steps": [policy[-window]["step"], policy[-1]["step"]]},
        "reward_rise": round(m1 - m0, 4), "rise_in_se": round((m1 - m0) / se, 2) if se > 0 else None,
        "explained_variance_after_warmup": {
            "median": round(statistics.median(ev), 4) if ev else None,
            "share_above_0.3": round(sum(e > 0.3 for e in ev) / len(ev), 3) if ev else None,
            "mean_last_window": round(sum(ev[-window:]) / len(ev[-window:]), 4) if ev else None},
        # the readout (training.ppo.train_readout): greedy answers to the same fixed training prompts at each validation
        # (and, with --train-readout-samples, the sampled answers' mean: what PPO optimises)
        "readout": [{"step": r["step"], "score": round(r["train/readout_score"], 4),
                     **({"sampled": round(r["train/readout_sampled_score"], 4)}
                        if r.get("train/readout_sampled_score") is not None else {})}
                    for r in rows if r.get("train/readout_score") is not None],
        "approx_kl_median": _median(policy, "policy/approx_kl"),
        "clipfrac_median": _median(policy, "policy/clipfrac"),
        "validation": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                       for r in rows if any(k.startswith("val/") for k in r)],
    }
    return out


def _median(rows: list[dict], key: str):
    xs = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(xs), 6) if xs else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("metrics", type=Path, help="the run's metrics.jsonl")
    p.add_argument("--warmup", type=int, required=True, help="critic warm-up iterations of the run (--critic-warmup)")
    p.add_argument("--window", type=int, default=10, help="policy iterations averaged at each end (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, help="also write the summary here")
    a = p.parse_args(argv)
    s = summarize(read_metrics(a.metrics), a.warmup, a.window)
    text = json.dumps(s, indent=1)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
