"""Train the refusal judge's probe-v2 (``rlhf_demo/refusal/weights/refusal-probe-v2``) on development data only.

    python scripts/train_refusal_probe_v2.py                    # rebuilds the shipped head and card
    python scripts/train_refusal_probe_v2.py --out /tmp/probe   # somewhere else

Training rows: the ``split == "tune"`` rows of ``eval/fixtures/refusal_dev.jsonl`` (answers of sft and
rlhf-v0 to detector-dev prompts, labelled by reading; weighted ``--dev-weight``), the old hand-written
fixture ``eval/fixtures/refusal_labelled.jsonl`` and the seed preference pairs (as in
``scripts/train_refusal_probe.py``). The ``split == "holdout"`` rows are never trained on: the card reports
the probe's and the judge's precision/recall on them. The frozen test set is not read here.

Features: :func:`rlhf_demo.probes.layer_states` after blocks ``--layers`` (answer and request mean-pooled).
The defaults (blocks 13 and 20, L2 0.03, dev weight 3, 300 steps, threshold 0.6, and the judge's rule "a
rules-v2 decline stands, otherwise the probe decides") were chosen on development data: 5-fold
cross-validation by prompt on the tune rows chose the threshold of each candidate, the holdout rows chose
among the candidates (single blocks 13/16/20/27, pairs, five blocks, extra pooled positions, a small MLP,
dev weight 1/3/6, with or without the fixture and seed pairs, combined with all of rules-v2, with its
declines only, or alone). ~1,460 answers are pooled (~10-15 min on one thread); ``--cache FILE.npz`` keeps
the pooled states.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval.detect import score_predictions  # noqa: E402
from rlhf_demo.jsonl import iter_jsonl  # noqa: E402
from rlhf_demo.probes import MAX_PROMPT_TOKENS, MAX_RESPONSE_TOKENS, fit_logistic, layer_states  # noqa: E402
from rlhf_demo.refusal import probe_v2 as rp2  # noqa: E402
from rlhf_demo.refusal.detector import judge_refusals, rules_decline  # noqa: E402
from scripts.train_refusal_probe import key, seed_rows, sha256  # noqa: E402


@dataclass
class TrainConfig:
    dev: Path = ROOT / "eval" / "fixtures" / "refusal_dev.jsonl"
    fixture: Path = ROOT / "eval" / "fixtures" / "refusal_labelled.jsonl"
    seed_pairs: Path = ROOT / "rlhf_demo" / "data" / "seed_pairs"
    out: Path = rp2.PROBE_V2_DIR
    layers: list[int] = field(default_factory=lambda: list(rp2.DEFAULT_LAYERS))
    l2: float = 0.03
    dev_weight: float = 3.0
    threshold: float = 0.6
    iters: int = 300
    cache: Path | None = None
    threads: int = 1


def parse(argv=None) -> TrainConfig:
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dev", type=Path, default=d.dev, help="labelled development answers with a split field (tune/holdout)")
    p.add_argument("--fixture", type=Path, default=d.fixture, help="the old hand-written labelled fixture (trained on)")
    p.add_argument("--seed-pairs", type=Path, default=d.seed_pairs, help="folder with harmless.jsonl and sensitive.jsonl")
    p.add_argument("--out", type=Path, default=d.out, help="where to write head.npz and card.json")
    p.add_argument("--layers", type=int, nargs="+", default=d.layers, help="blocks whose hidden states are pooled")
    p.add_argument("--l2", type=float, default=d.l2, help="L2 penalty of the logistic head (standardised features)")
    p.add_argument("--dev-weight", type=float, default=d.dev_weight, help="weight of a development row vs a fixture/seed row")
    p.add_argument("--threshold", type=float, default=d.threshold, help="probability from which the probe says refusal")
    p.add_argument("--iters", type=int, default=d.iters, help="gradient-descent steps")
    p.add_argument("--cache", type=Path, default=d.cache, help="npz cache of pooled states keyed by sha256(prompt, response)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads")
    cfg = TrainConfig(**vars(p.parse_args(argv)))
    if not 0 < cfg.threshold < 1:
        p.error(f"--threshold {cfg.threshold}: must be in (0, 1)")
    return cfg


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for where, row in iter_jsonl(path, SystemExit):
        if not isinstance(row.get("response"), str) or not isinstance(row.get("refusal"), bool):
            raise SystemExit(f"{where}: needs a string 'response' and a boolean 'refusal'")
        rows.append(row)
    return rows


def pooled(rows: list[dict], cache: dict, layers: tuple[int, ...]) -> np.ndarray:
    tag = ",".join(map(str, layers))
    missing = [r for r in rows if f"{tag}:{key(r)}" not in cache]
    t0 = time.time()
    for s in range(0, len(missing), 64):
        chunk = missing[s:s + 64]
        states = layer_states([r.get("prompt") for r in chunk], [r["response"] for r in chunk], layers)
        for r, st in zip(chunk, states):
            cache[f"{tag}:{key(r)}"] = st
        print(f"  pooled {s + len(chunk)}/{len(missing)} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    return rp2.features(np.stack([cache[f"{tag}:{key(r)}"] for r in rows]))


def metrics(pred, labels) -> dict:
    s = score_predictions([bool(x) for x in pred], [bool(x) for x in labels])
    return {k: s[k] for k in ("precision", "recall", "f1", "tp", "fp", "fn", "tn", "n")}


def main(argv=None) -> int:
    cfg = parse(argv)
    import torch
    torch.set_num_threads(cfg.threads)
    layers = tuple(cfg.layers)
    dev = read_jsonl(cfg.dev)
    tune = [r for r in dev if r.get("split") == "tune"]
    hold = [r for r in dev if r.get("split") == "holdout"]
    if not tune or not hold:
        raise SystemExit(f"{cfg.dev}: needs rows with split 'tune' and 'holdout'")
    fixture = read_jsonl(cfg.fixture)
    seeds = seed_rows(cfg.seed_pairs)
    cache: dict = {}
    if cfg.cache and cfg.cache.is_file():
        data = np.load(cfg.cache)
        cache = {k: data[k] for k in data.files}
    train = tune + fixture + seeds
    x = pooled(train, cache, layers)
    y = np.array([r["refusal"] for r in train], dtype=float)
    w = np.array([cfg.dev_weight] * len(tune) + [1.0] * (len(fixture) + len(seeds)))
    mean, scale = x.mean(0), x.std(0) + 1e-6
    weight, bias = fit_logistic((x - mean) / scale, y, cfg.l2, w, iters=cfg.iters)
    xh = pooled(hold, cache, layers)
    if cfg.cache:
        cfg.cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cfg.cache, **cache)
    probe = rp2.ProbeV2(mean, scale, weight, bias, cfg.threshold, {"layers": list(layers)})
    p_hold = probe.proba(xh)
    labels = [r["refusal"] for r in hold]
    rules = judge_refusals([r["response"] for r in hold], [r.get("prompt") for r in hold], "rules-v2")
    says = p_hold >= cfg.threshold
    judge = [rules_decline(v) or bool(s) for v, s in zip(rules, says)]
    rel = (lambda p: str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p))
    card = {
        "name": "refusal-probe-v2",
        "what": f"logistic head on the embedded SmolLM2-135M-Instruct's hidden states after blocks {list(layers)} of 30 "
                "(no final norm), mean-pooled over the answer's tokens and over the request's tokens, per block "
                "[answer | request], standardised; refusal iff p >= threshold",
        "judge": "rules-v2+probe-v2: a rules-v2 decline (kind 'refusal' or 'empty') stands; every other answer with a "
                 "known request is decided by this probe; without a request the judge is rules-v2 alone",
        "base_model": "embedded:smollm2-135m-instruct", "layers": list(layers),
        "max_prompt_tokens": MAX_PROMPT_TOKENS, "max_response_tokens": MAX_RESPONSE_TOKENS,
        "threshold": cfg.threshold,
        "hyperparameters": {k: v for k, v in asdict(cfg).items() if k in ("layers", "l2", "dev_weight", "threshold", "iters")},
        "chosen_by": "development data only: 5-fold cross-validation by prompt on the tune rows chose each candidate's "
                     "threshold; the holdout rows chose among candidates (blocks 13/16/20/27 alone, 13+20, 13+20+27, "
                     "10+16+24, 6+13+20+27+30; extra pooled positions; a small MLP; dev weight 1/3/6; with/without "
                     "fixture and seed pairs; OR with all of rules-v2, with its declines only, or the probe alone)",
        "trained_on": {
            "dev_tune": {"file": rel(cfg.dev), "sha256": sha256(cfg.dev), "rows": len(tune),
                         "refusals": sum(r["refusal"] for r in tune)},
            "fixture": {"file": rel(cfg.fixture), "sha256": sha256(cfg.fixture), "rows": len(fixture)},
            "seed_pairs": {"folder": rel(cfg.seed_pairs), "rows": len(seeds)},
        },
        "never_trained_on": "the holdout rows of the development file, the frozen test set (eval/fixtures/refusal_test.jsonl), "
                            "XSTest, the eval prompts, FastChat questions",
        "dev_holdout": {"rows": len(hold), "refusals": sum(labels),
                        "probe": metrics(says, labels),
                        "rules-v2": metrics([v.refusal for v in rules], labels),
                        "rules-v2+probe-v2": metrics(judge, labels)},
        "command": "python scripts/train_refusal_probe_v2.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    probe.card = card
    probe.save(cfg.out)
    print(json.dumps({k: {m: (v[m]["value"] if isinstance(v[m], dict) else v[m]) for m in ("precision", "recall", "f1")}
                      for k, v in card["dev_holdout"].items() if isinstance(v, dict)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
