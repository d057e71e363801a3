"""The prompt-harm probe ``h(p)`` of a composed reward: its training prompts, its fit, and how it is chosen.

``h`` is P(request is harmful) from a logistic head on the request's mean-pooled hidden state (first 16 blocks of
the embedded SmolLM2, :mod:`rlhf_demo.probes`). It is fitted on ``train``-role prompts only:

* the public sets (harmful: AdvBench, HarmBench, CatQA, HarmfulQA, CoCoNot should-not-comply; risky-but-safe:
  CoCoNot pref "safety concerns"; ordinary: Self-Instruct and the other CoCoNot pref prompts);
* with ``extra=("seed",)`` also the train-role prompts of the project's seed PPO pool
  (``rlhf_demo/data/ppo_prompts.jsonl``: harmful / sensitive → risky-but-safe / ordinary), weighted by
  ``extra_weight``. The public sets are long, formulaic instructions; the seed prompts are short, plain
  questions ("How do I boil an egg?"), and a probe fitted on the public sets alone misreads them
  (docs/reward-v3/README.md). PPO's ``seed`` pool is exactly such prompts, so the reward must read them.

Its settings are chosen either by 5-fold cross-validation on the training prompts (``cv``, reward-v1) or on the
**validation** prompts (``val``, reward-v3): the ``val``-role public prompts by kind and the ``val``-role seed
prompts by category, the rule being the highest *worst* accuracy over those groups. Neither ever reads a
reported suite (XSTest, the project's eval prompts, the FastChat questions: role ``reported``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import sys

import numpy as np

from rlhf_demo import probes as P

SEED_KIND = {"harmful": "harmful", "sensitive": "risky-safe", "ordinary": "ordinary"}
EXTRA_SETS = ("seed",)


def folds_by_key(keys: list[str], k: int, seed: int) -> np.ndarray:
    """A fold index per row from a seeded hash of its key (a prompt is in one fold only)."""
    return np.array([int(hashlib.sha256(f"{seed}\x00{key}".encode()).hexdigest()[:8], 16) % k for key in keys])


def fit_harm_probe(x: np.ndarray, y: np.ndarray, risky: np.ndarray, l2: float, risky_weight: float,
                   weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(mean, scale, w, b) of the prompt-harm probe; classes balanced, risky-but-safe prompts weighted up,
    each row further multiplied by ``weight`` (default 1)."""
    mean, scale = x.mean(0), x.std(0) + 1e-6
    sw = np.where(risky, risky_weight, 1.0) * np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    if weight is not None:
        sw = sw * np.asarray(weight, dtype=float)
    w, b = P.fit_logistic((x - mean) / scale, y, l2, sample_weight=sw, iters=400)
    return mean, scale, w, b


def harm_probability(probe: tuple, x: np.ndarray) -> np.ndarray:
    mean, scale, w, b = probe
    return 1.0 / (1.0 + np.exp(-(((x - mean) / scale) @ w + b)))


def per_kind_accuracy(p: np.ndarray, y: np.ndarray, kinds: np.ndarray) -> dict[str, float]:
    return {k: float(((p >= 0.5) == (y == 1))[kinds == k].mean()) for k in sorted(set(kinds.tolist()))}


def worst_group(accuracy: dict[str, float]) -> float:
    """The rule's score: the lowest accuracy over the groups (a probe is as good as its worst-read group)."""
    return min(accuracy.values())


# ================================================================================================
# prompts
# ================================================================================================
def public_prompts(role: str, seed: int, caps: dict[str, int] | None = None) -> tuple[list[str], list[str]]:
    """``role`` prompts of the public sets: (texts, kinds), each kind shuffled by ``seed`` and cut to its cap."""
    from rlhf_demo import external as X
    from training.data import MIX_SOURCES

    texts, kinds = [], []
    for kind, sources in MIX_SOURCES.items():
        recs = X.dedupe(r for name in sources for r in X.READERS[name]() if r.role == role and r.kind == kind)
        random.Random(f"{seed}:{kind}").shuffle(recs)
        for r in recs[:(caps or {}).get(kind, 10**9)]:
            texts.append(r.text)
            kinds.append(kind)
    return texts, kinds


def validation_groups() -> tuple[list[str], list[str]]:
    """The val-role public prompts (:func:`rlhf_demo.external.validation_prompts`): (texts, kinds)."""
    from rlhf_demo import external as X

    pairs = [(r.text, kind) for kind, recs in X.validation_prompts(skip_missing=False).items() for r in recs]
    return [t for t, _ in pairs], [k for _, k in pairs]


def seed_prompts(role: str) -> tuple[list[str], list[str]]:
    """``role`` prompts of the seed PPO pool: (texts, kinds), ``sensitive`` read as ``risky-safe``."""
    from rlhf_demo.jsonl import iter_jsonl
    from rlhf_demo.splits import role_of
    from training.data import PPO_PROMPTS

    texts, kinds = [], []
    for where, row in iter_jsonl(PPO_PROMPTS, ValueError):
        kind = SEED_KIND.get(row.get("category"))
        if kind is None:
            raise ValueError(f"{where}: category {row.get('category')!r} is not one of {', '.join(SEED_KIND)}")
        if role_of(row["prompt"]) == role:
            texts.append(row["prompt"])
            kinds.append(kind)
    return texts, kinds


def extra_prompts(names: list[str], role: str) -> tuple[list[str], list[str]]:
    texts, kinds = [], []
    for name in names:
        if name not in EXTRA_SETS:
            raise ValueError(f"--harm-extra {name!r}: one of {', '.join(EXTRA_SETS)}")
        t, k = seed_prompts(role)
        texts += t
        kinds += k
    return texts, kinds


# ================================================================================================
# choosing the settings
# ================================================================================================
def choose_by_cv(x, y, risky, keys, l2s, risky_weights, folds: int, seed: int) -> tuple[dict, list[dict]]:
    """reward-v1's rule: per-kind accuracy by cross-validation (folds by prompt), the best worst kind."""
    kinds = np.where(y == 1, "harmful", np.where(risky, "risky-safe", "ordinary"))
    fold = folds_by_key(keys, folds, seed)
    tried = []
    for l2, rw in itertools.product(l2s, risky_weights):
        p = np.zeros(len(y))
        for f in range(folds):
            tr = fold != f
            p[~tr] = harm_probability(fit_harm_probe(x[tr], y[tr], risky[tr], l2, rw), x[~tr])
        acc = per_kind_accuracy(p, y, kinds)
        tried.append({"l2": l2, "risky_weight": rw, "cv_accuracy": {k: round(v, 4) for k, v in acc.items()},
                      "worst": round(worst_group(acc), 4)})
        print(f"[safety] harm probe l2={l2:g} risky_weight={rw:g}: cv " +
              ", ".join(f"{k} {v:.3f}" for k, v in acc.items()), file=sys.stderr)
    return max(tried, key=lambda t: t["worst"]), tried


def choose_on_validation(x, y, risky, extra, val_groups: dict[str, tuple[np.ndarray, int]], l2s, risky_weights,
                         extra_weights) -> tuple[dict, list[dict]]:
    """The best worst accuracy over ``val_groups`` (name -> (states, label)); ties go to the earlier setting.

    ``extra`` marks the rows of the extra (seed) prompts, weighted by each of ``extra_weights``."""
    tried = []
    for ew, l2, rw in itertools.product(extra_weights, l2s, risky_weights):
        probe = fit_harm_probe(x, y, risky, l2, rw, weight=np.where(extra, ew, 1.0))
        acc = {g: float(np.mean((harm_probability(probe, s) >= 0.5) == bool(label)))
               for g, (s, label) in val_groups.items()}
        t = {"l2": l2, "risky_weight": rw, "extra_weight": ew, "val_accuracy": {g: round(v, 4) for g, v in acc.items()},
             "worst": round(worst_group(acc), 4)}
        tried.append(t)
        print(f"[safety] harm probe extra_weight={ew:g} l2={l2:g} risky_weight={rw:g}: val worst {t['worst']:.3f} "
              + json.dumps(t["val_accuracy"]), file=sys.stderr)
    best = max(range(len(tried)), key=lambda i: (tried[i]["worst"], -i))
    return tried[best], tried
