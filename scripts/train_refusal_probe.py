"""Train the refusal probe (``rlhf_demo/refusal/weights/refusal-probe-v1``) on development data only.

    python scripts/train_refusal_probe.py                       # rebuilds the shipped head and card
    python scripts/train_refusal_probe.py --out /tmp/probe      # somewhere else

Training rows: the ``split == "tune"`` rows of ``eval/fixtures/refusal_dev.jsonl`` (answers of sft and
rlhf-v0 labelled by reading; weighted ``--dev-weight``), the old hand-written fixture
``eval/fixtures/refusal_labelled.jsonl`` and the seed preference pairs (``harmless``: chosen = refusal,
rejected = compliance; ``sensitive``: chosen = answer, rejected = needless refusal). The
``split == "holdout"`` rows of the development file are never trained on: the card reports the
probe's and the combined judge's precision/recall on them. The frozen test set is not read here.

The hyper-parameters (layer 16, answer + request features, L2 0.03, dev weight 3, threshold 0.5, fixture
and seed pairs included) were chosen by 5-fold cross-validation by prompt on the tuning rows (F1 of
"rules-v2 or probe"; /work/scratch/judge/cv3.py during development, grid: L2 0.003-0.1, dev weight
1/3/6, with/without the fixture and seed pairs, threshold 0.3-0.7).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlhf_demo.jsonl import iter_jsonl  # noqa: E402
from rlhf_demo.refusal import probe as rp  # noqa: E402
from eval.detect import score_predictions  # noqa: E402
from rlhf_demo.refusal.detector import judge_refusal  # noqa: E402


@dataclass
class TrainConfig:
    dev: Path = ROOT / "eval" / "fixtures" / "refusal_dev.jsonl"
    fixture: Path = ROOT / "eval" / "fixtures" / "refusal_labelled.jsonl"
    seed_pairs: Path = ROOT / "rlhf_demo" / "data" / "seed_pairs"
    out: Path = rp.PROBE_DIR
    l2: float = 0.03
    dev_weight: float = 3.0
    threshold: float = 0.5
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
    p.add_argument("--l2", type=float, default=d.l2, help="L2 penalty of the logistic head (standardised features)")
    p.add_argument("--dev-weight", type=float, default=d.dev_weight, help="weight of a development row vs a fixture/seed row")
    p.add_argument("--threshold", type=float, default=d.threshold, help="probability above which the probe says refusal")
    p.add_argument("--iters", type=int, default=d.iters, help="gradient-descent steps")
    p.add_argument("--cache", type=Path, default=d.cache, help="npz cache of pooled states keyed by sha256(prompt, response)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads")
    return TrainConfig(**vars(p.parse_args(argv)))


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def seed_rows(folder: Path) -> list[dict]:
    rows = []
    for name, chosen_refuses in (("harmless", True), ("sensitive", False)):
        for _, r in iter_jsonl(folder / f"{name}.jsonl", SystemExit):
            prompt = r["prompt"][-1]["content"]
            rows.append({"prompt": prompt, "response": r["chosen"][-1]["content"], "refusal": chosen_refuses})
            rows.append({"prompt": prompt, "response": r["rejected"][-1]["content"], "refusal": not chosen_refuses})
    return rows


def key(row: dict) -> str:
    return hashlib.sha256(f"{row.get('prompt') or ''}\x00{row['response']}".encode()).hexdigest()


def pooled(rows: list[dict], cache: dict) -> np.ndarray:
    missing = [r for r in rows if key(r) not in cache]
    if missing:
        t0 = time.time()
        for s in range(0, len(missing), 64):
            chunk = missing[s:s + 64]
            states = rp.pooled_states([r.get("prompt") for r in chunk], [r["response"] for r in chunk])
            for r, st in zip(chunk, states):
                cache[key(r)] = st
            print(f"  pooled {s + len(chunk)}/{len(missing)} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    return np.stack([cache[key(r)] for r in rows])


def metrics(pred, labels) -> dict:
    s = score_predictions([bool(x) for x in pred], [bool(x) for x in labels])
    return {k: s[k] for k in ("precision", "recall", "f1", "tp", "fp", "fn", "tn", "n")}


def main(argv=None) -> int:
    cfg = parse(argv)
    import torch
    torch.set_num_threads(cfg.threads)
    dev = [r for _, r in iter_jsonl(cfg.dev, SystemExit)]
    tune = [r for r in dev if r["split"] == "tune"]
    hold = [r for r in dev if r["split"] == "holdout"]
    fixture = [r for _, r in iter_jsonl(cfg.fixture, SystemExit)]
    seeds = seed_rows(cfg.seed_pairs)
    cache: dict = {}
    if cfg.cache and cfg.cache.is_file():
        data = np.load(cfg.cache)
        cache = {k: data[k] for k in data.files}
    train = tune + fixture + seeds
    x = rp.features(pooled(train, cache))
    y = np.array([r["refusal"] for r in train], dtype=float)
    w = np.array([cfg.dev_weight] * len(tune) + [1.0] * (len(fixture) + len(seeds)))
    mean, scale = x.mean(0), x.std(0) + 1e-6
    weight, bias = rp.fit_logistic((x - mean) / scale, y, cfg.l2, w, iters=cfg.iters)
    xh = rp.features(pooled(hold, cache))
    if cfg.cache:
        cfg.cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cfg.cache, **cache)
    probe = rp.Probe(mean, scale, weight, bias, cfg.threshold, {})
    p_hold = probe.proba(xh)
    labels = [r["refusal"] for r in hold]
    rules = [judge_refusal(r["response"], r["prompt"], "rules-v2").refusal for r in hold]
    card = {
        "name": "refusal-probe-v1",
        "what": "logistic head on mean-pooled hidden states (after block 16 of 30) of the embedded SmolLM2-135M-Instruct: "
                "[answer tokens | request tokens], standardised; refusal iff p >= threshold",
        "base_model": "embedded:smollm2-135m-instruct", "layer": rp.LAYERS,
        "max_prompt_tokens": rp.MAX_PROMPT_TOKENS, "max_response_tokens": rp.MAX_RESPONSE_TOKENS,
        "threshold": cfg.threshold,
        "hyperparameters": {k: v for k, v in asdict(cfg).items() if k in ("l2", "dev_weight", "threshold", "iters")},
        "chosen_by": "5-fold cross-validation by prompt on the tuning rows of the development file (F1 of rules-v2 OR probe)",
        "trained_on": {
            "dev_tune": {"file": str(cfg.dev.relative_to(ROOT)) if cfg.dev.is_relative_to(ROOT) else str(cfg.dev),
                         "sha256": sha256(cfg.dev), "rows": len(tune), "refusals": sum(r["refusal"] for r in tune)},
            "fixture": {"file": "eval/fixtures/refusal_labelled.jsonl", "sha256": sha256(cfg.fixture), "rows": len(fixture)},
            "seed_pairs": {"folder": "rlhf_demo/data/seed_pairs", "rows": len(seeds)},
        },
        "never_trained_on": "the holdout rows of the development file, the frozen test set (eval/fixtures/refusal_test.jsonl), "
                            "XSTest, the eval prompts, FastChat questions",
        "dev_holdout": {"rows": len(hold), "refusals": sum(labels),
                        "probe": metrics(p_hold >= cfg.threshold, labels),
                        "rules-v2": metrics(rules, labels),
                        "rules-v2 or probe": metrics([a or b for a, b in zip(rules, p_hold >= cfg.threshold)], labels)},
        "command": "python scripts/train_refusal_probe.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    probe.card = card
    probe.save(cfg.out)
    print(json.dumps(card["dev_holdout"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
