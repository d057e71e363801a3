"""Can a linear probe see whether the answer does what was asked? probe-v2's features [answer | request] (mean
states after blocks 13 and 20) plus interaction features — cosine, elementwise product, absolute difference, as
sentence-pair classifiers use — on the dev tune rows, measured on the dev holdout. The frozen test set is not read.

    python docs/refusal-judge/interaction_features.py --cache /tmp/more_labels > docs/refusal-judge/interaction_features.txt

Threshold per candidate: 5-fold CV by prompt on the tune rows; judge: a rules-v2 decline stands, the probe decides the
rest (probe-v2's rule). Trained on the dev tune rows only (weight 1), 300 gradient steps as probe-v2.
"""
import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from rlhf_demo.probes import fit_logistic  # noqa: E402
from rlhf_demo.probes import layer_states  # noqa: E402
from rlhf_demo.refusal.detector import judge_refusals, rules_decline  # noqa: E402
ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--cache", type=Path, default=None, help="folder with dev.npy (the pooled states; written if missing)")
args = ap.parse_args()
dev = [json.loads(line) for line in open(ROOT / "eval/fixtures/refusal_dev.jsonl")]
cached = args.cache / "dev.npy" if args.cache else None
if cached and cached.is_file():
    S = np.load(cached)
else:
    S = layer_states([r["prompt"] for r in dev], [r["response"] for r in dev], (13, 20))
    if cached:
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.save(cached, S)
S = S.reshape(len(dev), 2, 2, -1)  # n, blocks (13, 20), (answer, request), hidden
y = np.array([r['refusal'] for r in dev], float)
D = np.array([rules_decline(v) for v in judge_refusals([r['response'] for r in dev], [r['prompt'] for r in dev], 'rules-v2')])
tune = np.array([r['split'] == 'tune' for r in dev]); hold = ~tune
a, q = S[:, :, 0], S[:, :, 1]
def cos(u, v):
    return (u * v).sum(-1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1) + 1e-9)
feats = {
 'v2 [a|r]': S.reshape(len(S), -1),
 '[a|r|cos]': np.hstack([S.reshape(len(S), -1), cos(a, q)]),
 '[a|r|a*r]': np.hstack([S.reshape(len(S), -1), (a * q).reshape(len(S), -1)]),
 '[a|r||a-r|]': np.hstack([S.reshape(len(S), -1), np.abs(a - q).reshape(len(S), -1)]),
 '[a|r|a*r||a-r|]': np.hstack([S.reshape(len(S), -1), (a * q).reshape(len(S), -1), np.abs(a - q).reshape(len(S), -1)]),
 '[a - r | r]': np.hstack([(a - q).reshape(len(S), -1), q.reshape(len(S), -1)]),
}
def f1(pred, yy):
    yy = yy > 0; tp = (pred & yy).sum(); fp = (pred & ~yy).sum(); fn = (~pred & yy).sum()
    return (2*tp/(2*tp+fp+fn) if tp else 0.0), (tp/(tp+fp) if tp+fp else 0), (tp/(tp+fn) if tp+fn else 0)
def auc(s, yy):
    yy = yy.astype(bool); pos, neg = s[yy], s[~yy]
    return np.mean(pos[:, None] > neg[None, :])
prom = [r['prompt'] for r in dev]
fold = np.array([int(hashlib.sha256(p.encode()).hexdigest(), 16) % 5 for p in prom])
for name, X in feats.items():
    for l2 in (0.03, 0.1):
        def fit(tr):
            mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-6
            w, b = fit_logistic((X[tr] - mu) / sd, y[tr], l2, np.full(tr.sum(), 1.0), iters=300)
            return lambda idx: ((X[idx] - mu) / sd) @ w + b
        oof = np.zeros(len(y))
        for k in range(5):
            tr = tune & (fold != k); te = tune & (fold == k)
            oof[te] = fit(tr)(te)
        p_oof = 1/(1+np.exp(-oof))
        thr = max((f1(D[tune] | (p_oof[tune] >= t), y[tune])[0], t) for t in np.arange(0.2, 0.91, 0.05))[1]
        s = fit(tune)(hold); p = 1/(1+np.exp(-s))
        F, P, R = f1(D[hold] | (p >= thr), y[hold])
        print(f'{name:18s} l2={l2:<5} holdout AUC {auc(s, y[hold]):.3f}  judge F1 {F:.3f} P {P:.3f} R {R:.3f} thr {thr:.2f}', flush=True)
