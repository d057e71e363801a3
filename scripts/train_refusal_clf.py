"""Train the refusal judge's classifier ``refusal-clf-v1`` (LoRA on the embedded base + a pooled head) on
development data only.

    # the shipped weights: train on the dev "tune" rows, measure every epoch on the "holdout" rows, pick the
    # threshold there, write weights + card to rlhf_demo/refusal/weights/refusal-clf-v1 (~15-25 min on one thread)
    python scripts/train_refusal_clf.py --train-on tune --threshold 0 --report runs/refusal-clf/A_ship.json
    # a recipe search run (nothing written but the report)
    python scripts/train_refusal_clf.py --train-on tune --no-save --blocks 6 --report runs/refusal-clf/B.json
    # the same recipe on every dev row (not what ships: the holdout then no longer measures it)
    python scripts/train_refusal_clf.py --train-on all --threshold 0.85 --dev-report runs/refusal-clf/A_ship.json

Data: ``eval/fixtures/refusal_dev.jsonl`` (answers of sft and rlhf-v0 to detector-dev prompts, labelled by
reading; field ``split`` = tune / holdout, disjoint by prompt); optionally the old hand-written fixture
``eval/fixtures/refusal_labelled.jsonl`` (``--fixture-weight``). The ``note`` field is never a feature. The
frozen test set (``eval/fixtures/refusal_test.jsonl``) is never read here.

Model (``rlhf_demo/refusal/clf.py``): blocks ``0 .. start-1`` of the base are frozen (their output is computed
once per answer and cached in memory, or in ``--cache``), blocks ``start .. start+blocks-1`` carry rank
``--rank`` adapters, the head pools [answer mean | request mean | last answer token] into one logit. Loss:
class-weighted binary cross-entropy; AdamW with linear warm-up and linear decay. With ``--train-on tune`` the
script reports precision/recall on the holdout rows after every epoch (the classifier alone and with rules-v2's
explicit declines standing first) at a grid of thresholds; with ``--train-on all`` it trains on every dev row and
writes the weights and card (the development numbers copied from ``--dev-report``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlhf_demo.jsonl import iter_jsonl  # noqa: E402
from rlhf_demo.refusal import clf as rc  # noqa: E402
from rlhf_demo.refusal.detector import judge_refusals, precision_recall, rules_decline  # noqa: E402
from scripts.train_refusal_probe_v2 import read_jsonl  # noqa: E402 - labelled answers, file:line errors

THRESHOLDS = tuple(round(x, 2) for x in np.arange(0.05, 0.96, 0.05))


@dataclass
class TrainConfig:
    dev: Path = ROOT / "eval" / "fixtures" / "refusal_dev.jsonl"
    fixture: Path = ROOT / "eval" / "fixtures" / "refusal_labelled.jsonl"
    fixture_weight: float = 0.0
    seed_pairs: Path = ROOT / "rlhf_demo" / "data" / "seed_pairs"
    seed_weight: float = 0.0
    train_on: str = "tune"
    out: Path = rc.CLF_DIR
    save: bool = True
    report: Path | None = None
    dev_report: Path | None = None
    start: int = 12
    blocks: int = 8
    rank: int = 8
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: list(rc.TARGETS))
    pools: list[str] = field(default_factory=lambda: ["answer", "request", "last"])
    lr: float = 3e-4
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    epochs: int = 4
    batch: int = 8
    warmup: float = 0.06
    lora_dropout: float = 0.05
    head_dropout: float = 0.1
    pos_weight: float = 0.0
    threshold: float = 0.5
    rules_first: bool = True
    seed: int = 0
    threads: int = 1
    cache: Path | None = None


def parse(argv=None) -> TrainConfig:
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dev", type=Path, default=d.dev, help="labelled development answers with a split field (tune/holdout)")
    p.add_argument("--fixture", type=Path, default=d.fixture, help="the old hand-written labelled fixture")
    p.add_argument("--fixture-weight", type=float, default=d.fixture_weight,
                   help="loss weight of a fixture row relative to a dev row (0: the fixture is not used)")
    p.add_argument("--seed-pairs", type=Path, default=d.seed_pairs,
                   help="folder with the seed preference pairs harmless.jsonl / sensitive.jsonl (as probe-v1/v2 use them)")
    p.add_argument("--seed-weight", type=float, default=d.seed_weight,
                   help="loss weight of a seed-pair answer relative to a dev row (0: not used)")
    p.add_argument("--train-on", choices=("tune", "all"), default=d.train_on,
                   help="tune: train on the dev tune rows and measure on the holdout rows every epoch; "
                        "all: train on every dev row (the shipped model)")
    p.add_argument("--out", type=Path, default=d.out, help="where to write weights.npz and card.json")
    p.add_argument("--no-save", dest="save", action="store_false", help="do not write weights (recipe search)")
    p.add_argument("--report", type=Path, default=d.report, help="write the per-epoch holdout numbers (JSON) here")
    p.add_argument("--dev-report", type=Path, default=d.dev_report,
                   help="with --train-on all: the --report of the tune run of the same recipe, copied into the card")
    p.add_argument("--start", type=int, default=d.start, help="first adapted block (0-based); blocks below are frozen")
    p.add_argument("--blocks", type=int, default=d.blocks, help="number of adapted blocks (the model runs start+blocks)")
    p.add_argument("--rank", type=int, default=d.rank, help="LoRA rank")
    p.add_argument("--alpha", type=float, default=d.alpha, help="LoRA scale numerator (update scaled by alpha/rank)")
    p.add_argument("--targets", nargs="+", default=d.targets, choices=rc.TARGETS, help="projections given adapters")
    p.add_argument("--pools", nargs="+", default=d.pools, choices=("answer", "request", "last"),
                   help="what the head pools: answer mean, request mean, last answer token")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate of the adapters")
    p.add_argument("--head-lr", type=float, default=d.head_lr, help="peak learning rate of the head")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument("--epochs", type=int, default=d.epochs, help="passes over the training rows")
    p.add_argument("--batch", type=int, default=d.batch, help="answers per step")
    p.add_argument("--warmup", type=float, default=d.warmup, help="fraction of steps of linear warm-up")
    p.add_argument("--lora-dropout", type=float, default=d.lora_dropout, help="dropout on the adapters' input")
    p.add_argument("--head-dropout", type=float, default=d.head_dropout, help="dropout on the pooled features")
    p.add_argument("--pos-weight", type=float, default=d.pos_weight,
                   help="loss weight of a refusal row (0: balanced, #non-refusals / #refusals of the training rows)")
    p.add_argument("--threshold", type=float, default=d.threshold,
                   help="probability from which the classifier says refusal (written to the card); 0 with --train-on "
                        "tune: the threshold of the best holdout F1 of the judge after the last epoch")
    p.add_argument("--no-rules-first", dest="rules_first", action="store_false",
                   help="record in the card that the judge does not let rules-v2's explicit declines stand first")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (init, shuffling, dropout)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads")
    p.add_argument("--cache", type=Path, default=d.cache,
                   help="file (.pt) keeping the frozen bottom's per-token states between runs (same start only)")
    cfg = TrainConfig(**vars(p.parse_args(argv)))
    if not (0 < cfg.threshold < 1 or (cfg.threshold == 0 and cfg.train_on == "tune")):
        p.error(f"--threshold {cfg.threshold}: must be in (0, 1) (0 only with --train-on tune)")
    if cfg.epochs < 1 or cfg.batch < 1 or cfg.start < 0 or cfg.blocks < 1 or cfg.rank < 1:
        p.error("--epochs, --batch, --blocks and --rank must be >= 1 and --start >= 0")
    if cfg.start + cfg.blocks > 30:
        p.error(f"--start {cfg.start} + --blocks {cfg.blocks} exceeds the base model's 30 blocks")
    return cfg


def seed_rows(folder: Path) -> list[dict]:
    """Seed preference pairs as labelled answers: in harmless.jsonl the chosen answer refuses, in sensitive.jsonl
    the rejected one does (the same reading as scripts/train_refusal_probe.py)."""
    rows = []
    for name, chosen_refuses in (("harmless", True), ("sensitive", False)):
        for _, r in iter_jsonl(Path(folder) / f"{name}.jsonl", SystemExit):
            prompt = r["prompt"][-1]["content"]
            rows.append({"prompt": prompt, "response": r["chosen"][-1]["content"], "refusal": chosen_refuses})
            rows.append({"prompt": prompt, "response": r["rejected"][-1]["content"], "refusal": not chosen_refuses})
    return rows


def usable_extra(rows: list[dict]) -> tuple[list[dict], int]:
    """The extra (non-dev) rows whose prompt may train the judge: never one whose role
    (:func:`rlhf_demo.splits.role_of`) is ``detector-test`` (the frozen test set's prompts come from there) or
    ``reported``. Returns (kept rows, number dropped)."""
    from rlhf_demo.splits import role_of

    kept = [r for r in rows if role_of(r.get("prompt") or "") not in ("detector-test", "reported")]
    return kept, len(rows) - len(kept)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def key(row: dict) -> str:
    return hashlib.sha256(f"{row.get('prompt') or ''}\x00{row['response']}".encode()).hexdigest()


def bottom_cache(clf, rows: list[dict], cache: dict) -> None:
    """Fill ``cache[key]`` with (ids, frozen bottom states [T, H]) for every row not yet in it."""
    import torch

    missing = [r for r in rows if key(r) not in cache]
    t0 = time.time()
    enc = clf.encode([r.get("prompt") for r in missing], [r["response"] for r in missing])
    order = sorted(range(len(missing)), key=lambda i: len(enc[i][0]))
    for s in range(0, len(order), 16):
        idx = order[s:s + 16]
        ids, attn, *_ = clf.batch([enc[i] for i in idx])
        states = clf.bottom_states(ids, attn)
        for row, i in enumerate(idx):
            n = len(enc[i][0])
            cache[key(missing[i])] = (enc[i], states[row, :n].clone())
        if (s // 16) % 10 == 0:
            print(f"  bottom states {s + len(idx)}/{len(missing)} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)


def collate(items: list[tuple]):
    """Cached (encoding, states) pairs -> padded states, mask, pooling weights, last index."""
    import torch

    width = max(len(e[0]) for e, _ in items)
    hidden = items[0][1].shape[-1]
    states = torch.zeros((len(items), width, hidden))
    for row, (e, st) in enumerate(items):
        states[row, :len(st)] = st
    return states


def predict(clf, items: list[tuple], batch: int = 16) -> np.ndarray:
    import torch

    clf.train(False)
    order = sorted(range(len(items)), key=lambda i: len(items[i][0][0]))
    out = np.zeros(len(items))
    with torch.inference_mode():
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            chunk = [items[i] for i in idx]
            _, attn, aw, rw, last = clf.batch([e for e, _ in chunk])
            z = clf.logits_from_states(collate(chunk), attn, aw, rw, last)
            out[idx] = torch.sigmoid(z.float()).numpy()
    return out


def grid(probs: np.ndarray, labels: list[bool], declines: list[bool] | None) -> dict:
    """Precision/recall/F1 at every threshold of :data:`THRESHOLDS` (with declines: a rules-v2 decline stands)."""
    out = {}
    for t in THRESHOLDS:
        pred = [bool(p >= t) or bool(declines and declines[i]) for i, p in enumerate(probs)]
        m = precision_recall(pred, labels)
        out[f"{t:.2f}"] = {k: round(m[k], 4) if isinstance(m[k], float) else m[k] for k in ("precision", "recall", "f1", "tp", "fp", "fn", "tn")}
    return out


def best(g: dict) -> tuple[str, dict]:
    return max(g.items(), key=lambda kv: (kv[1]["f1"], -abs(kv[1]["precision"] - kv[1]["recall"])))


def batches(n: int, lengths: list[int], batch: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar length (shuffle, sort within windows of 8 batches, shuffle the batches)."""
    idx = list(range(n))
    rng.shuffle(idx)
    out = []
    window = batch * 8
    for s in range(0, n, window):
        chunk = sorted(idx[s:s + window], key=lambda i: lengths[i])
        out.extend(chunk[k:k + batch] for k in range(0, len(chunk), batch))
    rng.shuffle(out)
    return out


def main(argv=None) -> int:
    cfg = parse(argv)
    import torch

    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    dev = read_jsonl(cfg.dev)
    from rlhf_demo.splits import check_not_reported
    check_not_reported([r.get("prompt") or "" for r in dev], str(cfg.dev))
    tune = [r for r in dev if r.get("split") == "tune"]
    hold = [r for r in dev if r.get("split") == "holdout"]
    if not tune or not hold:
        raise SystemExit(f"{cfg.dev}: needs rows with split 'tune' and 'holdout'")
    fixture = read_jsonl(cfg.fixture) if cfg.fixture_weight > 0 else []
    seeds = seed_rows(cfg.seed_pairs) if cfg.seed_weight > 0 else []
    fixture, dropped = usable_extra(fixture)
    seeds, dropped_seeds = usable_extra(seeds)
    if dropped or dropped_seeds:
        print(f"extra rows whose prompt is a detector-test or reported-suite prompt by rlhf_demo.splits.role_of, "
              f"not used: {dropped} fixture, {dropped_seeds} seed-pair", file=sys.stderr)
    fixture = fixture + seeds  # the extra (non-dev) rows
    train_rows = (tune if cfg.train_on == "tune" else dev) + fixture
    weights = ([1.0] * (len(train_rows) - len(fixture)) + [cfg.fixture_weight] * (len(fixture) - len(seeds))
               + [cfg.seed_weight] * len(seeds))

    shape = rc.ClfShape(start=cfg.start, blocks=cfg.blocks, rank=cfg.rank, alpha=cfg.alpha,
                        targets=tuple(cfg.targets), pools=tuple(cfg.pools))
    clf = rc.RefusalClassifier(shape, lora_dropout=cfg.lora_dropout, head_dropout=cfg.head_dropout)
    cache: dict = {}
    cache_tag = f"start={cfg.start}"
    if cfg.cache and cfg.cache.is_file():
        saved = torch.load(cfg.cache, weights_only=False)
        if saved.get("tag") == cache_tag:
            cache = saved["rows"]
    n_before = len(cache)
    bottom_cache(clf, train_rows + (hold if cfg.train_on == "tune" else []), cache)
    if cfg.cache and len(cache) > n_before:
        cfg.cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"tag": cache_tag, "rows": cache}, cfg.cache)

    items = [cache[key(r)] for r in train_rows]
    labels = torch.tensor([float(r["refusal"]) for r in train_rows])
    sample_w = torch.tensor(weights)
    n_pos = float(sum(r["refusal"] for r in train_rows))
    pos_weight = cfg.pos_weight if cfg.pos_weight > 0 else (len(train_rows) - n_pos) / max(n_pos, 1.0)
    params = clf.trainable()
    lora = [p for n, p in params.items() if n.startswith("top.")]
    head = [p for n, p in params.items() if n.startswith("head.")]
    opt = torch.optim.AdamW([{"params": lora, "lr": cfg.lr}, {"params": head, "lr": cfg.head_lr}],
                            weight_decay=cfg.weight_decay)
    rng = random.Random(cfg.seed)
    lengths = [len(e[0]) for e, _ in items]
    steps_per_epoch = -(-len(items) // cfg.batch)
    total = steps_per_epoch * cfg.epochs
    warm = max(1, int(cfg.warmup * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))

    hold_items = [cache[key(r)] for r in hold] if cfg.train_on == "tune" else []
    hold_labels = [r["refusal"] for r in hold]
    declines = None
    if hold_items:
        rules = judge_refusals([r["response"] for r in hold], [r.get("prompt") for r in hold], "rules-v2")
        declines = [rules_decline(v) for v in rules]
    history = []
    t0 = time.time()
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        clf.train(True)
        run_loss = 0.0
        for b in batches(len(items), lengths, cfg.batch, rng):
            chunk = [items[i] for i in b]
            _, attn, aw, rw, last = clf.batch([e for e, _ in chunk])
            z = clf.logits_from_states(collate(chunk), attn, aw, rw, last)
            y = labels[b]
            w = sample_w[b] * torch.where(y > 0, torch.tensor(pos_weight), torch.tensor(1.0))
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none") * w).sum() / w.sum()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lora + head, 1.0)
            opt.step()
            sched.step()
            step += 1
            run_loss += loss.item()
            if step % 20 == 0:
                print(f"epoch {epoch} step {step}/{total} loss {run_loss / 20:.4f} ({time.time() - t0:.0f} s)",
                      file=sys.stderr, flush=True)
                run_loss = 0.0
        entry = {"epoch": epoch, "seconds": round(time.time() - t0, 1)}
        if hold_items:
            probs = predict(clf, hold_items)
            g_alone, g_rules = grid(probs, hold_labels, None), grid(probs, hold_labels, declines)
            entry.update({"clf": g_alone, "rules_first": g_rules,
                          "best_clf": best(g_alone), "best_rules_first": best(g_rules),
                          "at_threshold": {"clf": g_alone.get(f"{cfg.threshold:.2f}"),
                                           "rules_first": g_rules.get(f"{cfg.threshold:.2f}")},
                          "probs": [round(float(p), 5) for p in probs]})
            print(f"epoch {epoch}: holdout best clf {entry['best_clf']}  rules-first {entry['best_rules_first']}",
                  file=sys.stderr, flush=True)
        history.append(entry)
        if cfg.report:
            cfg.report.parent.mkdir(parents=True, exist_ok=True)
            cfg.report.write_text(json.dumps({"config": {k: str(v) if isinstance(v, Path) else v
                                                         for k, v in asdict(cfg).items()},
                                              "holdout_ids": [r.get("id") for r in hold],
                                              "history": history}, indent=1) + "\n")

    if cfg.save:
        rel = (lambda p: str(p.relative_to(ROOT)) if p.resolve().is_relative_to(ROOT) else str(p))
        dev_numbers = json.loads(cfg.dev_report.read_text()) if cfg.dev_report else None
        clf.threshold = cfg.threshold
        if cfg.threshold == 0:  # chosen on the holdout rows (development data), for the judge as it will run
            last = history[-1]
            clf.threshold = float((last["best_rules_first"] if cfg.rules_first else last["best_clf"])[0])
        card = {
            "name": rc.CLF_NAME,
            "what": f"LoRA (rank {cfg.rank}, alpha {cfg.alpha:g}) on {', '.join(cfg.targets)} of blocks {cfg.start}.."
                    f"{cfg.start + cfg.blocks - 1} of the embedded SmolLM2-135M-Instruct (blocks below frozen, blocks above "
                    f"never run) and a linear head on the layer-normed output pooled as [{' | '.join(cfg.pools)}]; "
                    "input: the chat-formatted request and answer, each cut to 64 tokens; refusal iff p >= threshold",
            "judge": ("refusal-clf-v1: a rules-v2 explicit decline (kind 'refusal' or 'empty') stands; every other answer "
                      "is decided by this classifier when its request is known; without a request the judge is rules-v2 alone")
                     if cfg.rules_first else "refusal-clf-v1: every answer is decided by this classifier",
            "rules_first": cfg.rules_first,
            "base_model": "embedded:smollm2-135m-instruct",
            "hyperparameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()
                                if k not in ("dev", "fixture", "out", "save", "report", "dev_report", "cache", "threads")},
            "pos_weight_used": pos_weight,
            "trained_on": {"file": rel(cfg.dev), "sha256": sha256(cfg.dev),
                           "splits": "tune" if cfg.train_on == "tune" else "tune + holdout (all dev rows)",
                           "rows": len(train_rows) - len(fixture), "refusals": int(n_pos) - sum(r["refusal"] for r in fixture),
                           "fixture_rows": len(fixture) - len(seeds), "fixture_weight": cfg.fixture_weight,
                           "seed_pair_rows": len(seeds), "seed_weight": cfg.seed_weight,
                           "extra_rows_dropped_by_role": {"fixture": dropped, "seed_pairs": dropped_seeds}},
            "never_trained_on": ("the frozen test set (eval/fixtures/refusal_test.jsonl), any prompt whose role is "
                                 "detector-test or reported (rlhf_demo.splits.role_of), XSTest, the eval prompts, "
                                 "FastChat questions" + (", the dev holdout rows" if cfg.train_on == "tune" else "")),
            "dev_estimate": dev_numbers,
            "training_seconds_after_each_epoch": [h["seconds"] for h in history],
            "command": "python scripts/train_refusal_clf.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if hold_items:
            t = f"{clf.threshold:.2f}"
            card["dev_holdout"] = {"rows": len(hold), "refusals": sum(hold_labels), "threshold": clf.threshold,
                                   "threshold_chosen_on": "holdout (best F1 of the judge after the last epoch)"
                                   if cfg.threshold == 0 else "given (--threshold)",
                                   "judge_rules_first": history[-1]["rules_first"][t], "clf_alone": history[-1]["clf"][t],
                                   "per_epoch_best": [{"epoch": h["epoch"], "rules_first": h["best_rules_first"],
                                                       "clf": h["best_clf"]} for h in history]}
        clf.save(cfg.out, card)
        print(f"wrote {cfg.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
