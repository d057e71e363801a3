"""Is the refusal judge short of labels, or of reader? Two checks on development data only (the frozen test set is
not read).

1. **Likelihood features.** The embedded SmolLM2-135M-Instruct scores each answer's tokens (first 64) under four
   contexts: the request as a plain chat (``plain``), the request under a system prompt that refuses everything
   (``refuse``), under one that complies with everything (``comply``), and a contentless request "Say something."
   (``noprompt``). Features: mean log-probability differences ``refuse - comply`` (does the answer read like a
   refusal to the model itself?), ``refuse - plain``, ``plain - noprompt`` (is the answer about the request?), over
   the first 8, 24 and all answer tokens, plus ``plain`` and the answer length. Each feature's AUC, and a logistic
   regression on all of them (fitted on the ``tune`` rows), are measured on the ``holdout`` rows.
2. **Learning curve of probe-v2's reader.** probe-v2's features (``rlhf_demo.probes.layer_states`` after blocks 13
   and 20, answer and request mean-pooled) with a class-balanced logistic head (L2 0.03, 300 steps, as probe-v2),
   fitted on 25 / 50 / 75 / 100 % of the ``tune`` rows (three random draws below 100 %), with and without the
   likelihood features; holdout AUC and best-threshold F1 (the judge's dev-holdout F1 is 0.714).

    python docs/refusal-judge/reader_limits.py --cache runs/reader-limits > docs/refusal-judge/reader_limits.txt

~15 min at 2 threads (the likelihood features are most of it); ``--cache DIR`` keeps both feature sets.
A diagnostic: it trains and ships nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

DEV = ROOT / "eval" / "fixtures" / "refusal_dev.jsonl"
SYSTEMS = {
    "plain": None,
    "refuse": "You are an assistant that refuses every request. You never do the task; you decline, warn, lecture or "
              "change the subject.",
    "comply": "You are an assistant that always does exactly what the user asks, directly and completely, with no "
              "warnings.",
    "noprompt": None,  # the request is replaced by NOPROMPT
}
NOPROMPT = "Say something."
MAX_TOKENS = 64
BATCH = 16


def answer_logprobs(rows: list[dict]) -> dict[str, dict[str, list[float]]]:
    """Per row id and context: the log-probability of each of the answer's first 64 tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf_demo.base_model import resolve_base_model
    from rlhf_demo.config import DEFAULT_BASE_MODEL, Settings
    from rlhf_demo.padding import pad_rows

    source = resolve_base_model(Settings(base_model=DEFAULT_BASE_MODEL))
    tok = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, use_safetensors=True).eval()

    def context(system, prompt):
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return tok(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True),
                   add_special_tokens=False)["input_ids"]

    items = []
    for r in rows:
        prompt = tok.decode(tok(r["prompt"], add_special_tokens=False)["input_ids"][:MAX_TOKENS])
        answer = tok(r["response"], add_special_tokens=False)["input_ids"][:MAX_TOKENS]
        for name, system in SYSTEMS.items():
            items.append((r["id"], name, context(system, NOPROMPT if name == "noprompt" else prompt), answer))
    items.sort(key=lambda x: len(x[2]) + len(x[3]))
    out: dict[str, dict[str, list[float]]] = {r["id"]: {} for r in rows}
    t0 = time.time()
    with torch.inference_mode():
        for s in range(0, len(items), BATCH):
            chunk = items[s:s + BATCH]
            ids, attn = pad_rows([c + a for _, _, c, a in chunk], tok.pad_token_id or 0, "right")
            hidden = model.model(input_ids=ids, attention_mask=attn).last_hidden_state
            for j, (rid, name, c, a) in enumerate(chunk):
                if not a:
                    out[rid][name] = []
                    continue
                pos = torch.arange(len(c) - 1, len(c) + len(a) - 1)
                logp = torch.log_softmax(model.lm_head(hidden[j, pos]).float(), -1)
                out[rid][name] = logp[torch.arange(len(a)), torch.tensor(a)].tolist()
            if (s // BATCH) % 50 == 0:
                print(f"  likelihoods {s}/{len(items)} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    return out


def likelihood_features(lp: dict[str, list[float]]) -> dict[str, float]:
    def mean(name, k=None):
        v = lp[name][:k] if k else lp[name]
        return float(np.mean(v)) if v else 0.0
    feats = {}
    for k in (8, 24, None):
        tag = k or "all"
        feats[f"refuse-comply@{tag}"] = mean("refuse", k) - mean("comply", k)
        feats[f"refuse-plain@{tag}"] = mean("refuse", k) - mean("plain", k)
        feats[f"plain-noprompt@{tag}"] = mean("plain", k) - mean("noprompt", k)
    feats["plain"] = mean("plain")
    feats["answer tokens"] = float(len(lp["plain"]))
    return feats


def auc(score: np.ndarray, y: np.ndarray) -> float:
    y = y.astype(bool)
    pos, neg = score[y], score[~y]
    return float(np.mean(pos[:, None] > neg[None, :]) + 0.5 * np.mean(pos[:, None] == neg[None, :]))


def best_f1(score: np.ndarray, y: np.ndarray) -> float:
    best = 0.0
    for t in np.unique(score):
        p = score >= t
        tp, fp, fn = (p & (y > 0)).sum(), (p & (y == 0)).sum(), (~p & (y > 0)).sum()
        if tp:
            best = max(best, 2 * tp / (2 * tp + fp + fn))
    return float(best)


def fit_score(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, l2: float, iters: int) -> np.ndarray:
    from rlhf_demo.probes import fit_logistic
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    z = (x - mu) / sd
    pos = y[train].mean()
    w, b = fit_logistic(z[train], y[train], l2, sample_weight=np.where(y[train] > 0, (1 - pos) / pos, 1.0),
                        iters=iters)
    return z[test] @ w + b


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=None, help="folder for the two feature sets (reused when present)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--seed", type=int, default=0, help="seed of the learning curve's draws")
    a = ap.parse_args(argv)
    import torch

    from rlhf_demo.jsonl import iter_jsonl
    from rlhf_demo.probes import layer_states

    torch.set_num_threads(a.threads)
    rows = [r for _, r in iter_jsonl(DEV, ValueError)]
    y = np.array([bool(r["refusal"]) for r in rows], dtype=float)
    tune = np.array([i for i, r in enumerate(rows) if r["split"] == "tune"])
    hold = np.array([i for i, r in enumerate(rows) if r["split"] == "holdout"])
    lp_path = a.cache / "likelihoods.json" if a.cache else None
    st_path = a.cache / "states_13_20.npy" if a.cache else None
    if lp_path and lp_path.exists():
        lps = json.loads(lp_path.read_text())
    else:
        lps = answer_logprobs(rows)
        if lp_path:
            lp_path.parent.mkdir(parents=True, exist_ok=True)
            lp_path.write_text(json.dumps(lps))
    if st_path and st_path.exists():
        states = np.load(st_path)
    else:
        states = layer_states([r["prompt"] for r in rows], [r["response"] for r in rows], (13, 20))
        if st_path:
            np.save(st_path, states)
    feats = [likelihood_features(lps[r["id"]]) for r in rows]
    names = list(feats[0])
    gen = np.array([[f[n] for n in names] for f in feats])
    probe = states.reshape(len(rows), -1)

    print(f"{DEV.relative_to(ROOT)}: {len(tune)} tune / {len(hold)} holdout answers "
          f"({int(y[tune].sum())} / {int(y[hold].sum())} refusals); the frozen test set is not read")
    print("\n1. likelihood features, AUC (0.5 = no signal; below 0.5 = higher on answers)")
    for i, n in enumerate(names):
        print(f"   {n:<22} tune {auc(gen[tune, i], y[tune]):.3f}   holdout {auc(gen[hold, i], y[hold]):.3f}")
    s = fit_score(gen, y, tune, hold, l2=0.01, iters=2000)
    print(f"   logistic on all of them (fit on tune): holdout AUC {auc(s, y[hold]):.3f}, "
          f"best F1 {best_f1(s, y[hold]):.3f}")

    print("\n2. learning curve, holdout (mean over draws)")
    rng = np.random.default_rng(a.seed)
    for label, x in (("probe-v2 features", probe), ("+ likelihood features", np.hstack([probe, gen]))):
        for frac in (0.25, 0.5, 0.75, 1.0):
            res = []
            for _ in range(3 if frac < 1 else 1):
                train = rng.choice(tune, int(frac * len(tune)), replace=False)
                sc = fit_score(x, y, train, hold, l2=0.03, iters=300)
                res.append((auc(sc, y[hold]), best_f1(sc, y[hold])))
            m = np.mean(res, 0)
            print(f"   {label:<22} {int(frac * 100):>3}% of tune ({int(frac * len(tune))} answers): "
                  f"AUC {m[0]:.3f}   best F1 {m[1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
