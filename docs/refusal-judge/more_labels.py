"""Does probe-v2 get better with more development labels? Its head retrained with the ~2,000 answers to
validation prompts that people read blind for the policy checks (docs/rlhf-v1/val_read, docs/decode-noise/val_fp32),
chosen — as probe-v2 was — on the dev holdout only. The frozen test set is not read.

    python docs/refusal-judge/more_labels.py --cache /tmp/more_labels > docs/refusal-judge/more_labels.txt

Features: probe-v2's (rlhf_demo.probes.layer_states after blocks 13 and 20; ~3,900 answers, ~6 min at 2 threads,
kept in --cache). Training rows: the dev "tune" answers (weight --dev-weight, 3 as probe-v2), optionally the old
fixture + the seed pairs (weight 1, as probe-v2) and the validation-read answers (weight val_w; answers read twice
with different labels dropped). Each candidate's threshold: 5-fold cross-validation by prompt on the real answers
(dev tune + validation reads). The judge is probe-v2's: a rules-v2 decline stands, the probe decides the rest.
Score: the judge on the dev holdout (401 answers of sft and rlhf-v0 to detector-dev prompts, never trained on).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rlhf_demo.probes import fit_logistic, layer_states  # noqa: E402
from rlhf_demo.refusal.detector import judge_refusals, rules_decline  # noqa: E402
from rlhf_demo.splits import role_of  # noqa: E402
from scripts.train_refusal_probe import seed_rows  # noqa: E402

READS = ["docs/rlhf-v1/val_read/labelled.jsonl", "docs/decode-noise/val_fp32/labelled.jsonl"]
LAYERS = (13, 20)


def states(rows: list[dict], cache: Path | None, name: str) -> np.ndarray:
    path = cache / f"{name}.npy" if cache else None
    if path and path.is_file():
        x = np.load(path)
    else:
        x = layer_states([r.get("prompt") for r in rows], [r["response"] for r in rows], LAYERS)
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, x)
    return x.reshape(len(rows), -1)


def read_labels() -> list[dict]:
    labels, rows = collections.defaultdict(set), []
    for f in READS:
        for line in open(ROOT / f):
            r = json.loads(line)
            if labels[(r["prompt"], r["response"])] == set():
                rows.append(r)
            labels[(r["prompt"], r["response"])].add(r["refusal"])
    kept = [r for r in rows if len(labels[(r["prompt"], r["response"])]) == 1]
    assert all(role_of(r["prompt"]) == "val" for r in kept), "validation reads must be val-role prompts"
    return kept


def scores(pred: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    y = y > 0
    tp, fp, fn = (pred & y).sum(), (pred & ~y).sum(), (~pred & y).sum()
    return (2 * tp / (2 * tp + fp + fn) if tp else 0.0), (tp / (tp + fp) if tp + fp else 0.0), (tp / (tp + fn) if tp + fn else 0.0)


def fit(x, y, w, l2, iters):
    mu, sd = x.mean(0), x.std(0) + 1e-6
    weight, bias = fit_logistic((x - mu) / sd, y, l2, w, iters=iters)
    return lambda z: 1 / (1 + np.exp(-(((z - mu) / sd) @ weight + bias)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, default=None, help="folder keeping the pooled states between runs")
    p.add_argument("--threads", type=int, default=2, help="torch threads for the states")
    p.add_argument("--dev-weight", type=float, default=3.0, help="weight of a dev tune answer (probe-v2: 3)")
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    dev = [json.loads(line) for line in open(ROOT / "eval/fixtures/refusal_dev.jsonl")]
    fix = [json.loads(line) for line in open(ROOT / "eval/fixtures/refusal_labelled.jsonl")]
    extra = fix + seed_rows(ROOT / "rlhf_demo/data/seed_pairs")
    val = read_labels()
    x_dev, x_extra, x_val = states(dev, args.cache, "dev"), states(extra, args.cache, "fixture_seed"), states(val, args.cache, "val_reads")
    y_dev = np.array([r["refusal"] for r in dev], float)
    y_extra = np.array([r["refusal"] for r in extra], float)
    y_val = np.array([r["refusal"] for r in val], float)

    def declines(rows):
        return np.array([rules_decline(v) for v in judge_refusals([r["response"] for r in rows], [r.get("prompt") for r in rows], "rules-v2")])

    d_dev, d_val = declines(dev), declines(val)
    tune = np.array([r["split"] == "tune" for r in dev])
    hold = np.array([r["split"] == "holdout" for r in dev])
    print(f"dev tune {tune.sum()} answers ({int(y_dev[tune].sum())} refusals), dev holdout {hold.sum()} "
          f"({int(y_dev[hold].sum())}), fixture + seed pairs {len(extra)}, validation reads {len(val)} "
          f"({int(y_val.sum())} refusals, {len({r['prompt'] for r in val})} prompts)")
    print("judge = rules-v2 decline, else probe >= threshold; threshold by 5-fold CV by prompt on the real training answers")

    def candidate(use_extra, val_w, l2, iters):
        parts = [(x_dev[tune], y_dev[tune], args.dev_weight, [r["prompt"] for r, t in zip(dev, tune) if t], d_dev[tune])]
        if val_w:
            parts.append((x_val, y_val, val_w, [r["prompt"] for r in val], d_val))
        n_real = sum(len(q[1]) for q in parts)
        if use_extra:
            parts.append((x_extra, y_extra, 1.0, [None] * len(extra), np.zeros(len(extra), bool)))
        x = np.vstack([q[0] for q in parts])
        y = np.concatenate([q[1] for q in parts])
        w = np.concatenate([np.full(len(q[1]), q[2]) for q in parts])
        prompts = sum([q[3] for q in parts], [])
        dec = np.concatenate([q[4] for q in parts])
        fold = np.array([int(hashlib.sha256(q.encode()).hexdigest(), 16) % 5 if i < n_real else -1
                         for i, q in enumerate(prompts)])
        oof = np.zeros(len(y))
        for k in range(5):
            oof[fold == k] = fit(x[fold != k], y[fold != k], w[fold != k], l2, iters)(x[fold == k])
        real = fold >= 0
        cv_f1, thr = max((scores(dec[real] | (oof[real] >= t), y[real])[0], t) for t in np.arange(0.2, 0.91, 0.05))
        prob = fit(x, y, w, l2, iters)(x_dev[hold])
        return thr, cv_f1, scores(d_dev[hold] | (prob >= thr), y_dev[hold])

    grid = [(True, v, l2, 300) for v in (0, 1, 3) for l2 in (0.03, 0.1, 0.3)]  # probe-v2's rows + the reads
    grid += [(True, v, 0.03, 1500) for v in (0, 1)]  # longer fits (300 steps do not converge at every setting)
    for use_extra, val_w, l2, iters in grid:
        thr, cv_f1, (f1, prec, rec) = candidate(use_extra, val_w, l2, iters)
        print(f"fixture+seed={use_extra!s:5} val_w={val_w} l2={l2:<5} iters={iters:<5} threshold {thr:.2f} "
              f"(CV F1 {cv_f1:.3f})   dev holdout: F1 {f1:.3f}  P {prec:.3f}  R {rec:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
