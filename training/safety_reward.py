"""The safety term of a composed reward model: refuse what is harmful, answer what is safe.

One scalar reward head trained on contrastive pairs learned the *voice* of an answer rather than the
*prompt's* harmfulness (docs/reward-v1/README.md: every candidate traded "refuse the harmful" against
"answer the safe"). This module makes the interaction explicit, in the spirit of rule-based rewards
(Mu et al. 2024, a helpful-only reward model plus a fitted safety score) and of Safe-RLHF's separate cost
(Dai et al. 2023)::

    reward(p, a) = rm(p, a) + (2 h(p) - 1) * (v . z(p, a))

* ``rm`` — a trained reward adapter (reward-v0: seed pairs + HH-RLHF harmless), unchanged;
* ``h(p)`` — the **prompt-harm probe** (:mod:`training.harm_probe`): P(request is harmful) from a
  logistic head on the request's mean-pooled hidden state (first 16 blocks of the embedded SmolLM2,
  :mod:`rlhf_demo.probes`), fitted
  on ``train``-role prompts only (harmful: AdvBench, HarmBench, CatQA, HarmfulQA, CoCoNot
  should-not-comply; safe: CoCoNot risky-but-safe, Self-Instruct, other CoCoNot), its L2 and the weight
  of the risky-but-safe prompts chosen by 5-fold cross-validation on those training prompts;
* ``z(p, a)`` — the answer's standardised mean-pooled hidden state (same pass), and ``v`` a vector
  fitted **pairwise** (Bradley–Terry with ``rm``'s margin as a fixed offset) on the built contrastive
  pairs (``rlhf_demo/data/pairs/train.jsonl``): on a harmful prompt (``2h-1 ≈ +1``) what ``v`` scores
  high wins, on a safe one (``≈ -1``) it loses. Because the same refusal texts are chosen on harmful
  prompts and rejected on safe ones, ``v`` learns "refuses" and the gate learns "should refuse".

A prompt the probe is unsure of (``h ≈ 0.5``) leaves the reward to ``rm``. The term is stored in the
reward version's directory (``safety_term.npz`` + ``safety_term.json``) next to the adapter and
head, so a composed version loads like any other (:class:`training.roles.RewardScorer` adds the term).

    python -m training.safety_reward --base-reward reward-v0 --name reward-v1   # ~10 min, 1 thread

``--signal refusal-clf-v1`` (reward-v2) keeps ``h`` and replaces ``v . z`` by the refusal classifier's verdict::

    reward(p, a) = rm(p, a) + scale * (2 h(p) - 1) * (2 c(p, a) - 1)

where ``c`` is the probability that the answer is a refusal (:mod:`rlhf_demo.refusal.clf`, which reads the text).
Nothing is fitted for the answer side; ``scale`` is chosen among ``--scales`` on the training pairs (the rule,
:func:`choose_scale`: the highest worst accuracy over the two contrast categories — a refusal beats SFT's answer
to a harmful request, SFT's answer beats a refusal of a risky-but-safe one); validation pairs are reported only.

    python -m training.safety_reward --signal refusal-clf-v1 --harm-probe-from reward-v1 --name reward-v2

reward-v3 is reward-v2 with ``h`` fitted again, on the public train-role prompts plus the seed PPO pool's (short,
plain questions the public sets lack), its settings chosen on val-role prompts (:mod:`training.harm_probe`)::

    python -m training.safety_reward --signal refusal-clf-v1 --harm-extra seed --harm-choice val --name reward-v3
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlhf_demo import probes as P
from training.harm_probe import (choose_by_cv, choose_on_validation, extra_prompts, fit_harm_probe,  # noqa: F401
                                 folds_by_key, per_kind_accuracy, public_prompts)

from rlhf_demo.safety_term import (LINEAR, REFUSAL_CLF, SIGNALS, TERM_CARD, TERM_FILE, SafetyTerm,  # noqa: F401
                                   gate, last_user, refusal_term, safety_term)


# ================================================================================================
# fitting (pure functions, tested against hand-computed values)
# ================================================================================================
def fit_pairwise(z_chosen: np.ndarray, z_rejected: np.ndarray, gates: np.ndarray, offset: np.ndarray,
                 l2: float, iters: int = 400, lr: float = 0.5) -> np.ndarray:
    """``v`` minimising ``mean(-log σ(offset + g (v·(z_c - z_r)))) + l2/2 |v|²`` by gradient descent.

    ``offset`` is the fixed reward model's margin ``rm(chosen) - rm(rejected)`` of each pair, ``g`` its
    prompt's gate: the Bradley–Terry loss of the composed reward with only ``v`` free."""
    x = gates[:, None] * (np.asarray(z_chosen, np.float64) - np.asarray(z_rejected, np.float64))
    v = np.zeros(x.shape[1])
    for _ in range(iters):
        m = offset + x @ v
        g = -1.0 / (1.0 + np.exp(m))  # d/dm of -log σ(m)
        v -= lr * (x.T @ g / len(m) + l2 * v)
    return v


def pair_accuracy(chosen: np.ndarray, rejected: np.ndarray) -> float:
    return float(np.mean(np.asarray(chosen) > np.asarray(rejected))) if len(chosen) else float("nan")




# ================================================================================================
# the command
# ================================================================================================
PAIRS_DIR = Path(__file__).resolve().parents[1] / "rlhf_demo" / "data" / "pairs"
SEED_HELDOUT = "seed-heldout"  # a --report-pairs FILE: the seed pairs reward-v0 held out (20%, split seed 0)
SEED_TRAIN = "seed-train"  # a --pairs FILE: the other 80%, which reward-v0 trained on


@dataclass
class SafetyConfig:
    base_reward: str = dataclasses.field(default="reward-v0", metadata={
        "help": "the reward version whose adapter and head the composed version keeps (its raw score is rm)"})
    pairs: list[str] = dataclasses.field(default_factory=lambda: [str(PAIRS_DIR / "train.jsonl"), SEED_TRAIN], metadata={
        "help": "training pairs to fit v on: training.build_pairs' train.jsonl (train-role prompts only) and "
                f"'{SEED_TRAIN}' (the 80%% of the seed pairs reward-v0 trained on, so the term keeps what rm knows)"})
    name: str = dataclasses.field(default="reward-v1", metadata={"help": "version name to publish"})
    signal: str = dataclasses.field(default=LINEAR, metadata={
        "help": f"what reads the answer: '{LINEAR}' (a vector v fitted on the pooled answer state, reward-v1) or "
                f"'{REFUSAL_CLF}' (the refusal classifier's probability that the answer is a refusal, reward-v2)"})
    scales: list[float] = dataclasses.field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0, 8.0], metadata={
        "help": f"with --signal {REFUSAL_CLF}: the term sizes tried (chosen by pair accuracy on --pairs)"})
    harm_probe_from: str = dataclasses.field(default="", metadata={
        "help": "copy the prompt-harm probe from this composed reward version instead of fitting it again "
                "(e.g. reward-v1: same prompts, same seed, same probe; saves the pooling of ~2,000 prompts)"})
    publish_dir: str = dataclasses.field(default="", metadata={
        "help": "publish into this folder (e.g. rlhf_demo/versions, shipped) instead of the data dir's registry"})
    replace: bool = dataclasses.field(default=False, metadata={"help": "with --publish-dir: replace a version of that name"})
    publish: bool = dataclasses.field(default=True, metadata={"help": "publish the version (--no-publish: fit and report only)"})
    max_harmful: int = dataclasses.field(default=900, metadata={
        "help": "train-role harmful prompts for the prompt-harm probe (sources in turn, seeded shuffle)"})
    max_ordinary: int = dataclasses.field(default=600, metadata={"help": "train-role ordinary prompts for the probe"})
    harm_l2: list[float] = dataclasses.field(default_factory=lambda: [1e-3, 1e-2, 3e-2], metadata={
        "help": "L2 values tried for the prompt-harm probe (chosen by cross-validation on train-role prompts)"})
    risky_weight: list[float] = dataclasses.field(default_factory=lambda: [1.0, 3.0, 5.0], metadata={
        "help": "weights of the risky-but-safe prompts tried (same cross-validation; the rule: best worst-kind accuracy)"})
    harm_extra: list[str] = dataclasses.field(default_factory=list, metadata={
        "help": "more train-role prompts for the prompt-harm probe: 'seed' = the seed PPO pool's (short, plain "
                "questions the public sets lack; harmful / sensitive / ordinary); needs --harm-choice val"})
    harm_extra_weight: list[float] = dataclasses.field(default_factory=lambda: [1.0, 3.0, 10.0], metadata={
        "help": "weights of the --harm-extra prompts tried (with --harm-choice val)"})
    harm_choice: str = dataclasses.field(default="cv", metadata={
        "help": "how the probe's settings are chosen: 'cv' (5-fold cross-validation on the training prompts, the "
                "best worst kind; reward-v1) or 'val' (the best worst accuracy over the val-role public prompts by kind "
                "and the val-role seed prompts by category; reward-v3)"})
    answer_l2: list[float] = dataclasses.field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 0.3, 1.0], metadata={
        "help": "L2 values tried for v (chosen by cross-validated pair accuracy on the training pairs, folds by prompt)"})
    folds: int = dataclasses.field(default=5, metadata={"help": "cross-validation folds"})
    report_pairs: list[str] = dataclasses.field(default_factory=lambda: [
        f"heldout={PAIRS_DIR / 'heldout_val.jsonl'}", f"contrast={PAIRS_DIR / 'contrast_val.jsonl'}",
        f"hh_heldout={PAIRS_DIR / 'hh_heldout.jsonl'}", f"seed_heldout={SEED_HELDOUT}"], metadata={
        "help": "NAME=FILE pair sets scored for the card (validation: reported, never used to choose); FILE "
                f"'{SEED_HELDOUT}' = the 20%% of the seed pairs reward-v0 held out"})
    cache: str = dataclasses.field(default="", metadata={
        "help": "an .npz to keep the pooled states and raw scores in (a second run with the same data is fast)"})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of the prompt shuffles and the folds"})
    threads: int = dataclasses.field(default=1, metadata={"help": "torch threads"})


def _seed_rows(part: str) -> list[dict]:
    """The seed pairs on one side of reward-v0's split (``--validation-fraction 0.2 --seed 0``)."""
    from training.data import load_pairs, split_by_prompt

    train, val = split_by_prompt(load_pairs(["seed"]), 0.2, 0)
    return [dict(p.to_trl(), category=f"seed/{p.category}") for p in (val if part == SEED_HELDOUT else train)]


def _digest(spec: str) -> str:
    """sha256 of a pairs file, or of the rows of a built-in seed split."""
    if spec in (SEED_HELDOUT, SEED_TRAIN):
        return hashlib.sha256(json.dumps(_seed_rows(spec), sort_keys=True).encode()).hexdigest()
    return sha256(Path(spec))


def _pair_rows(path: Path) -> list[dict]:
    from rlhf_demo.jsonl import iter_jsonl

    if str(path) in (SEED_HELDOUT, SEED_TRAIN):
        return _seed_rows(str(path))
    rows = []
    for where, row in iter_jsonl(path, ValueError):
        for k in ("prompt", "chosen", "rejected"):
            if not isinstance(row.get(k), list) or not row[k]:
                raise ValueError(f"{where}: a pair needs non-empty message lists 'prompt', 'chosen', 'rejected'")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no pairs")
    return rows


def _states(rows: list[dict], scorer, cache: dict, tag: str) -> dict:
    """Pooled states (answer, request) and raw reward scores of both sides of each pair."""
    if f"{tag}|sc" in cache:
        return {k: cache[f"{tag}|{k}"] for k in ("sc", "sr", "rc", "rr")}
    prompts = [last_user(r["prompt"] + r["chosen"]) for r in rows]
    ch = [r["chosen"][-1].get("content", "") for r in rows]
    rj = [r["rejected"][-1].get("content", "") for r in rows]
    pooled = P.pooled_states(prompts + prompts, ch + rj)
    out = {"sc": pooled[:len(rows)], "sr": pooled[len(rows):],
           "rc": np.array(scorer.score_raw([r["prompt"] + r["chosen"] for r in rows])),
           "rr": np.array(scorer.score_raw([r["prompt"] + r["rejected"] for r in rows]))}
    cache.update({f"{tag}|{k}": v for k, v in out.items()})
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _pooled_requests(texts: list[str], cache: dict, key: str) -> np.ndarray:
    """Pooled request states, cached under ``key`` and a hash of the texts (a cache of other prompts is not reused)."""
    key = f"{key}@" + hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:12]
    if key not in cache:
        cache[key] = P.pooled_states(texts, [""] * len(texts))[:, 1]
    return cache[key]


def _fit_harm_probe(cfg: SafetyConfig, cache: dict) -> tuple[tuple, dict]:
    """Step 1: the prompt-harm probe on train-role prompts (:mod:`training.harm_probe`), settings by ``--harm-choice``."""
    from rlhf_demo.splits import normalize_text
    from training import harm_probe as H

    t0 = time.time()
    if cfg.harm_choice not in ("cv", "val"):
        raise ValueError(f"--harm-choice {cfg.harm_choice!r}: 'cv' or 'val'")
    if cfg.harm_extra and cfg.harm_choice != "val":
        raise ValueError("--harm-extra needs --harm-choice val (the extra prompts' weight is chosen on validation)")
    texts, kinds = public_prompts("train", cfg.seed, {"harmful": cfg.max_harmful, "ordinary": cfg.max_ordinary})
    x = _pooled_requests(texts, cache, "prompts|x")
    et, ek = extra_prompts(cfg.harm_extra, "train")
    if et:
        x = np.concatenate([x, _pooled_requests(et, cache, "prompts|x:" + "+".join(cfg.harm_extra))])
    kinds = np.array(kinds + ek)
    y, risky, extra = (kinds == "harmful").astype(float), kinds == "risky-safe", np.arange(len(kinds)) >= len(texts)
    counts = {"n": len(kinds), "harmful": int(y.sum()), "risky_safe": int(risky.sum()),
              "extra": {"sets": cfg.harm_extra, "n": len(et)}}
    print(f"[safety] {len(kinds)} train-role prompts ({int(y.sum())} harmful, {int(risky.sum())} risky-but-safe, "
          f"{len(et)} from {cfg.harm_extra or 'no extra set'}) pooled in {time.time() - t0:.0f}s", file=sys.stderr)
    if cfg.harm_choice == "cv":
        best, tried = choose_by_cv(x, y, risky, [normalize_text(t) for t in texts], cfg.harm_l2, cfg.risky_weight,
                                   cfg.folds, cfg.seed)
        weight, rule = None, "5-fold cross-validation on the training prompts: the best worst-kind accuracy"
    else:
        groups = {}
        for tag, (vt, vk) in {"val": H.validation_groups(), "seed-val": H.seed_prompts("val")}.items():
            vs = _pooled_requests(vt, cache, f"prompts|{tag}")
            for k in sorted(set(vk)):
                groups[f"{tag}/{k}"] = (vs[np.array(vk) == k], int(k == "harmful"))
        best, tried = choose_on_validation(x, y, risky, extra, groups, cfg.harm_l2, cfg.risky_weight,
                                           cfg.harm_extra_weight)
        weight = np.where(extra, best["extra_weight"], 1.0)
        counts["validation"] = {g: len(s) for g, (s, _) in groups.items()}
        rule = ("the best worst accuracy over the val-role public prompts by kind and the val-role seed prompts by "
                "category (ties: the earlier setting tried)")
    probe = fit_harm_probe(x, y, risky, best["l2"], best["risky_weight"], weight=weight)
    return probe, {"chosen": best, "tried": tried, "rule": rule, "prompts": counts}


def build(cfg: SafetyConfig, settings, argv: list[str] | None = None) -> dict:
    import torch

    from rlhf_demo.registry import Registry
    from rlhf_demo.splits import normalize_text
    from training.roles import load_reward_scorer, resolve_reward_version

    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    base = resolve_reward_version(settings, cfg.base_reward)
    if SafetyTerm.load(base.path) is not None:
        raise ValueError(f"--base-reward {base.name} is already composed (it has {TERM_FILE}); start from a plain one")
    if cfg.publish and not cfg.publish_dir:
        Registry(settings.versions_dir).check_new_name(cfg.name, hint="pass another --name or --no-publish")
    cache_path = Path(cfg.cache) if cfg.cache else None
    cache = dict(np.load(cache_path)) if cache_path and cache_path.exists() else {}

    if cfg.signal not in SIGNALS:
        raise ValueError(f"--signal {cfg.signal!r}: one of {', '.join(SIGNALS)}")
    # 1. the prompt-harm probe, on train-role prompts; its settings by cross-validation on them
    if cfg.harm_probe_from:
        source = resolve_reward_version(settings, cfg.harm_probe_from)
        donor = SafetyTerm.load(source.path)
        if donor is None:
            raise ValueError(f"--harm-probe-from {source.name}: it has no {TERM_FILE} (not a composed version)")
        hm, hs, hw, hb = donor.harm_mean, donor.harm_scale, donor.harm_weight, donor.harm_bias
        harm_card = {**donor.card["harm_probe"], "copied_from": source.name,
                     "sha256": sha256(source.path / TERM_FILE)}
        print(f"[safety] prompt-harm probe copied from {source.name}", file=sys.stderr)
    else:
        (hm, hs, hw, hb), harm_card = _fit_harm_probe(cfg, cache)

    scorer = load_reward_scorer(settings, base.name, batch_size=16)
    if cfg.signal == REFUSAL_CLF:
        return _build_refusal_term(cfg, settings, argv, base, scorer, (hm, hs, hw, hb), harm_card, cache,
                                   cache_path, t0)

    # 2. v, pairwise on the training pairs with the reward model's margin as offset
    rows, parts = [], []
    for i, spec in enumerate(cfg.pairs):
        rws = _pair_rows(Path(spec))
        parts.append(_states(rws, scorer, cache, "train" if i == 0 else f"pairs:{spec}"))
        rows += rws
    st = {k: np.concatenate([p[k] for p in parts]) for k in ("sc", "sr", "rc", "rr")}
    answers = np.concatenate([st["sc"][:, 0], st["sr"][:, 0]])
    am, asc = answers.mean(0), answers.std(0) + 1e-6
    term0 = SafetyTerm(hm, hs, hw, hb, am, asc, np.zeros(len(am)), {})
    h = term0.harm_probability(st["sc"][:, 1])
    g, offset = gate(h), st["rc"] - st["rr"]
    zc, zr = term0.answer_features(st["sc"][:, 0]), term0.answer_features(st["sr"][:, 0])
    fold = folds_by_key([normalize_text(last_user(r["prompt"] + r["chosen"])) for r in rows], cfg.folds, cfg.seed)
    v_tried = []
    for l2 in cfg.answer_l2:
        wins = np.zeros(len(rows), dtype=bool)
        for f in range(cfg.folds):
            tr = fold != f
            v = fit_pairwise(zc[tr], zr[tr], g[tr], offset[tr], l2)
            wins[~tr] = offset[~tr] + g[~tr] * ((zc[~tr] - zr[~tr]) @ v) > 0
        v_tried.append({"l2": l2, "cv_pair_accuracy": round(float(wins.mean()), 4)})
        print(f"[safety] v l2={l2:g}: cv pair accuracy {wins.mean():.3f}", file=sys.stderr)
    v_best = max(v_tried, key=lambda t: t["cv_pair_accuracy"])
    v = fit_pairwise(zc, zr, g, offset, v_best["l2"])
    if cache_path:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache_path, **cache)

    # 3. validation numbers for the card (reported; nothing above looked at them)
    term = SafetyTerm(hm, hs, hw, hb, am, asc, v, {})
    report = _report(cfg, lambda rws, tag: _states(rws, scorer, cache, tag),
                     lambda s: (term.from_states(s["sc"])[0], term.from_states(s["sr"])[0]), cache, cache_path)
    command = "python -m training.safety_reward " + " ".join(argv if argv is not None else sys.argv[1:])
    term.card = {"layer": P.LAYERS, "formula": "rm(p, a) + (2 h(p) - 1) * (v . z(p, a))",
                 "harm_probe": harm_card,
                 "answer_vector": {"chosen": v_best, "tried": v_tried},
                 "pairs": [{"spec": spec, "sha256": _digest(spec)} for spec in cfg.pairs] + [{"n": len(rows)}],
                 "validation": report, "command": command, "seconds": round(time.time() - t0, 1)}
    summary = {"validation": report, "harm_probe": harm_card.get("chosen"), "answer_vector": v_best}
    return _publish(cfg, settings, base, term, report, command, summary)


def _refusal_states(rows: list[dict], scorer, term: SafetyTerm, cache: dict, tag: str) -> dict:
    """Per pair: the request's ``h``, the refusal probabilities of both answers and the raw reward scores."""
    prompts = [last_user(r["prompt"] + r["chosen"]) for r in rows]
    # h is keyed by the probe (a cache of one build serves another with a different probe); c and rm are not
    hkey = f"{tag}|h@" + hashlib.sha256(np.asarray(term.harm_weight, np.float64).tobytes()).hexdigest()[:12]
    if hkey not in cache:
        cache[hkey] = term.request_harm(prompts)
    if f"{tag}|cc" in cache:
        return {"h": cache[hkey], **{k: cache[f"{tag}|{k}"] for k in ("cc", "cr", "rc", "rr")}}
    ch = [r["chosen"][-1].get("content", "") for r in rows]
    rj = [r["rejected"][-1].get("content", "") for r in rows]
    c = term.refusal_probability(prompts + prompts, ch + rj)
    out = {"h": cache[hkey], "cc": c[:len(rows)], "cr": c[len(rows):],
           "rc": np.array(scorer.score_raw([r["prompt"] + r["chosen"] for r in rows])),
           "rr": np.array(scorer.score_raw([r["prompt"] + r["rejected"] for r in rows]))}
    cache.update({f"{tag}|{k}": v for k, v in out.items()})
    return out


# The training pairs whose two answers are what PPO will weigh against each other: the SFT policy's own answer
# vs a refusal, on a harmful request (the refusal should win) and on a risky-but-safe one (the answer should win).
CONTRAST_CATEGORIES = ("harmful/refusal>sft", "risky-safe/sft>refusal")


def choose_scale(st: dict, scales: list[float], categories: np.ndarray | None = None) -> tuple[dict, list[dict]]:
    """The scale of ``rm + refusal_term`` by pair accuracy on the training pairs.

    The rule: the highest *worst* accuracy over :data:`CONTRAST_CATEGORIES` (both directions of the trade a
    policy faces: refuse the harmful, answer the risky-but-safe), then the highest overall accuracy, then the
    smaller scale. Without category labels (or without those categories), the overall accuracy alone."""
    cats = np.asarray(categories if categories is not None else [""] * len(st["h"]))
    present = [c for c in CONTRAST_CATEGORIES if (cats == c).any()]
    tried = []
    for sc in sorted(scales):
        wins = (st["rc"] + refusal_term(st["h"], st["cc"], sc)) > (st["rr"] + refusal_term(st["h"], st["cr"], sc))
        t = {"scale": sc, "pair_accuracy": round(float(wins.mean()), 4)}
        if present:
            t["by_category"] = {c: round(float(wins[cats == c].mean()), 4) for c in present}
            t["worst_contrast"] = min(t["by_category"].values())
        tried.append(t)
    best = max(tried, key=lambda t: (t.get("worst_contrast", 0.0), t["pair_accuracy"], -t["scale"]))
    return best, tried


def _build_refusal_term(cfg: SafetyConfig, settings, argv, base, scorer, harm: tuple, harm_card: dict, cache: dict,
                        cache_path: Path | None, t0: float) -> dict:
    """reward-v2: ``rm + scale (2h - 1)(2c - 1)``; the scale chosen on the training pairs, validation reported."""
    d = len(harm[0])
    term = SafetyTerm(*harm, np.zeros(1), np.ones(1), np.zeros(1), {}, signal=REFUSAL_CLF)
    parts, rows = [], []
    for spec in cfg.pairs:
        rws = _pair_rows(Path(spec))
        parts.append(_refusal_states(rws, scorer, term, cache, f"refusal:{spec}"))
        rows += rws
        if cache_path:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache_path, **cache)
    st = {k: np.concatenate([p[k] for p in parts]) for k in ("h", "cc", "cr", "rc", "rr")}
    best, tried = choose_scale(st, cfg.scales, np.array([r.get("category") or "" for r in rows]))
    for t in tried:
        print(f"[safety] scale {t['scale']:g}: training-pair accuracy {t['pair_accuracy']:.3f}, by contrast category "
              f"{t.get('by_category')}", file=sys.stderr)
    term.scale = best["scale"]
    report = _report(cfg, lambda rws, tag: _refusal_states(rws, scorer, term, cache, f"refusal-report:{tag}"),
                     lambda s: (refusal_term(s["h"], s["cc"], term.scale), refusal_term(s["h"], s["cr"], term.scale)),
                     cache, cache_path)
    command = "python -m training.safety_reward " + " ".join(argv if argv is not None else sys.argv[1:])
    from rlhf_demo.refusal.clf import CLF_DIR, CLF_NAME

    term.card = {"layer": P.LAYERS, "formula": "rm(p, a) + scale * (2 h(p) - 1) * (2 c(p, a) - 1)",
                 "harm_probe": harm_card, "harm_dims": d,
                 "refusal_classifier": {"name": CLF_NAME, "sha256": sha256(CLF_DIR / "weights.npz")},
                 "scale_choice": {"chosen": best, "tried": tried, "rule": "highest worst accuracy over the training "
                                  "pairs of " + " and ".join(CONTRAST_CATEGORIES) + ", then overall, then the smaller scale"},
                 "pairs": [{"spec": spec, "sha256": _digest(spec)} for spec in cfg.pairs] + [{"n": len(rows)}],
                 "validation": report, "command": command, "seconds": round(time.time() - t0, 1)}
    summary = {"validation": report, "scale": best, "scales_tried": tried}
    return _publish(cfg, settings, base, term, report, command, summary)


def _report(cfg: SafetyConfig, states_of, terms_of, cache: dict, cache_path: Path | None) -> dict:
    """Pair accuracy of rm alone and of rm + term on each ``--report-pairs`` set, overall and per category.

    ``states_of(rows, tag)`` -> the states of those pairs (with raw scores ``rc``/``rr``); ``terms_of(states)`` ->
    the term of the chosen and of the rejected answers."""
    report = {}
    for spec in cfg.report_pairs:
        tag, _, path = spec.partition("=")
        rws = _pair_rows(Path(path))
        s = states_of(rws, tag)
        tc, tr_ = terms_of(s)
        cats = [r.get("category") or r.get("kind") or tag for r in rws]
        per = {}
        for c in sorted(set(cats)):
            i = np.array([x == c for x in cats])
            per[c] = {"n": int(i.sum()), "composed": round(pair_accuracy((s["rc"] + tc)[i], (s["rr"] + tr_)[i]), 4),
                      "rm_alone": round(pair_accuracy(s["rc"][i], s["rr"][i]), 4)}
        report[tag] = {"file": str(path), "sha256": _digest(path), "n": len(rws),
                       "composed": round(pair_accuracy(s["rc"] + tc, s["rr"] + tr_), 4),
                       "rm_alone": round(pair_accuracy(s["rc"], s["rr"]), 4), "by_category": per}
        if cache_path:
            np.savez(cache_path, **cache)
        print(f"[safety] {tag}: composed {report[tag]['composed']:.3f} (rm alone {report[tag]['rm_alone']:.3f}, "
              f"n={len(rws)})", file=sys.stderr)
    return report


def _publish(cfg: SafetyConfig, settings, base, term: SafetyTerm, report: dict, command: str, summary: dict) -> dict:
    from rlhf_demo.registry import publish_to, software_versions

    if not cfg.publish:
        return summary
    import tempfile

    what = ("the refusal classifier's verdict, gated by a prompt-harm probe" if term.signal == REFUSAL_CLF
            else "a safety term fitted on contrastive pairs")
    with tempfile.TemporaryDirectory() as tmp:
        for f in base.path.iterdir():
            if f.is_file() and f.name != "card.json":
                shutil.copyfile(f, Path(tmp) / f.name)
        term.save(Path(tmp))
        card = {"kind": "reward", "base_model": base.card.get("base_model", settings.base_model),
                "description": f"{cfg.name}: {base.name}'s reward head plus {what} "
                               "(refuse the harmful, answer the safe; training.safety_reward)",
                "parent": base.name, "composed": {"reward_head_from": base.name, "base_files": base.card.get("files", {}),
                                                  "safety_term": term.card},
                "config": {**base.card.get("config", {}), "safety": dataclasses.asdict(cfg)},
                "command": command, "data": base.card.get("data", []) + [
                    {"name": "safety-pairs", "spec": spec, "sha256": _digest(spec)} for spec in cfg.pairs],
                "metrics": {f"{k}/composed": v["composed"] for k, v in report.items()},
                "settings": base.card.get("settings", {}), "software": software_versions()}
        version = publish_to(Path(tmp), card, settings.versions_dir, name=cfg.name, publish_dir=cfg.publish_dir,
                             replace=cfg.replace)
    print(f"[safety] published {version.name} at {version.path}", file=sys.stderr)
    summary["published"] = str(version.path)
    return summary


def main(argv: list[str] | None = None) -> int:
    from rlhf_demo.flags import parse_config

    cfg, settings = parse_config(SafetyConfig, "python -m training.safety_reward", __doc__, argv)
    try:
        out = build(cfg, settings, argv)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out["validation"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
