"""Answers for the refusal judge's development and frozen test sets (issue 13, item 1).

Chooses prompts by role (``rlhf_demo.splits.role_of``: ``detector-test`` for the test set,
``detector-dev`` for the development set) from the vendored public prompt sets, in three kinds:

* ``harmful``    — AdvBench ``goal``, HarmBench ``Behavior`` (FunctionalCategory ``standard``), CatQA
  (English) and HarmfulQA questions, CoCoNot-eval rows of category "Requests with safety concerns";
* ``risky-safe`` — CoCoNot-pref ``prompt`` (prompts that sound risky, or are odd / underspecified, and
  should be answered);
* ``ordinary``   — self-instruct instructions (user-oriented + seed tasks), with the first instance's
  input appended after a blank line when it has one.

Every chosen prompt is answered by several (policy, decoding) combinations — SFT and the shipped
``rlhf-v0`` by default, greedy and sampled at temperature 0.7 and 1.0 (top-p 0.9, fixed seeds) — in
batches through ``rlhf_demo.generation.decode_batch`` (one base model, the policies as LoRA adapters,
mixed-adapter batches; the same path as ``python -m eval``).

Writes, under ``--out-dir``, for the split:

* ``<split>_blind.jsonl`` — ``{id, prompt, response}``, rows in a seeded random order, ids by position:
  what a labeller reads, with nothing that tells the policy or the decoding;
* ``<split>_key.jsonl``   — ``{id, source, prompt_kind, policy, decoding, seed, finish_reason, tokens}``;
* ``<split>_unlabelled.jsonl`` — the two joined (``id, source, prompt_kind, prompt, response, policy,
  decoding``), also copied to ``--copy-to`` when given.

What built the shipped sets (``eval/README.md``, "Refusal: definition and labelling rules")::

    # frozen test set, batch 1 (480 answers) and batch 2 (280 more answers to harmful prompts)
    .venv/bin/python scripts/make_refusal_answers.py --split test --threads 1 --out-dir /work/scratch/labeller
    .venv/bin/python scripts/make_refusal_answers.py --split test --answers 280 --mix 1,0,0 \\
        --decodings greedy t0.7 --exclude /work/scratch/labeller/test_blind.jsonl --name test2 \\
        --first-id 481 --seed 14 --threads 1 --out-dir /work/scratch/labeller
    # development answers (unlabelled)
    .venv/bin/python scripts/make_refusal_answers.py --split dev --threads 1 --out-dir /work/scratch/labeller \\
        --copy-to eval/fixtures/refusal_dev_unlabelled.jsonl

Prompt choice and sampling seeds are fixed by ``--seed``; a sampled answer can still differ in a rerun
when its batch differs (other rows, padding), since batched float arithmetic is not bit-identical.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rlhf_demo.jsonl import jsonl_rows, read_bytes  # noqa: E402
from rlhf_demo.splits import data_file, normalize_text, reported_prompt_keys, role_of  # noqa: E402

KINDS = ("harmful", "risky-safe", "ordinary")
SPLIT_ROLE = {"test": "detector-test", "dev": "detector-dev"}
# decoding name -> (greedy, temperature, top_p)
DECODINGS = {"greedy": (True, 0.0, 1.0), "t0.7": (False, 0.7, 0.9), "t1.0": (False, 1.0, 0.9)}


@dataclass
class Prompt:
    text: str
    source: str
    kind: str


@dataclass
class Job:
    prompt: Prompt
    policy: str
    decoding: str
    seed: int
    response: str = ""
    finish_reason: str = ""
    tokens: int = 0
    prompt_ids: list[int] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# prompt sources
# ---------------------------------------------------------------------------------------------
def _need(sub_path: str) -> Path:
    path = data_file(sub_path)
    if path is None:
        raise SystemExit(f"error: {sub_path} not found under rlhf_demo/data/external or ../shared/data")
    return path


def _csv_rows(path: Path):
    with open(path, newline="", encoding="utf-8") as fh:
        for lineno, row in enumerate(csv.DictReader(fh), start=2):
            yield lineno, row


def _jsonl_rows(path: Path):
    for lineno, _, row in jsonl_rows(read_bytes(path, SystemExit), path, SystemExit):
        yield lineno, row


def _nested_strings(node):
    """The question strings of CatQA / HarmfulQA files (dicts of categories of lists)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _nested_strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _nested_strings(v)


def load_candidates() -> list[Prompt]:
    """Every candidate prompt of the three kinds (duplicates by normalised text dropped, first wins)."""
    out: list[Prompt] = []
    for _, row in _csv_rows(_need("advbench/harmful_behaviors.csv")):
        out.append(Prompt(row["goal"], "advbench", "harmful"))
    for _, row in _csv_rows(_need("harmbench/harmbench_behaviors_text_all.csv")):
        if row.get("FunctionalCategory") == "standard":
            out.append(Prompt(row["Behavior"], "harmbench", "harmful"))
    for name in ("catqa_english", "harmfulqa"):
        path = _need(f"catqa-harmfulqa/{name}.json")
        with open(path, encoding="utf-8") as fh:
            for text in _nested_strings(json.load(fh)):
                out.append(Prompt(text, name, "harmful"))
    for _, row in _jsonl_rows(_need("coconot/coconot_eval.jsonl")):
        if row.get("category") == "Requests with safety concerns":
            out.append(Prompt(row["prompt"], "coconot_eval", "harmful"))
    for _, row in _jsonl_rows(_need("coconot/coconot_pref.jsonl")):
        out.append(Prompt(row["prompt"], f"coconot_pref:{row.get('category', '')}", "risky-safe"))
    for name in ("user_oriented_instructions", "seed_tasks"):
        for _, row in _jsonl_rows(_need(f"self-instruct/{name}.jsonl")):
            text = row["instruction"].strip()
            inst = (row.get("instances") or [{}])[0]
            if str(inst.get("input", "")).strip():
                text = f"{text}\n\n{inst['input'].strip()}"
            out.append(Prompt(text, f"self-instruct:{name}", "ordinary"))
    seen, unique = set(), []
    for p in out:
        key = normalize_text(p.text)
        if p.text.strip() and key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


# ---------------------------------------------------------------------------------------------
# choosing prompts and (policy, decoding) combinations — pure, seeded
# ---------------------------------------------------------------------------------------------
def answer_targets(total: int, shares: dict[str, float]) -> dict[str, int]:
    """Answers per prompt kind: ``total`` split by ``shares`` (rounded; the remainder to the largest)."""
    counts = {k: int(round(total * shares[k])) for k in KINDS}
    counts[max(KINDS, key=lambda k: shares[k])] += total - sum(counts.values())
    return counts


def stable_seed(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x00".join(parts).encode()).digest()[:4], "big") & 0x7FFFFFFF


def plan_jobs(candidates: list[Prompt], role: str, total: int, shares: dict[str, float], policies: list[str],
              decodings: list[str], per_prompt: int, seed: int, reported: frozenset[str] | None = None
              ) -> list[Job]:
    """Choose prompts of ``role`` and give each ``per_prompt`` distinct (policy, decoding) combinations
    (more where a kind has too few prompts), the least used combinations first, so every combination is used about equally."""
    rng = random.Random(f"{seed}:{role}")
    combos = [(p, d) for p in policies for d in decodings]
    used = {c: 0 for c in combos}
    jobs: list[Job] = []
    targets = answer_targets(total, shares)
    for kind in KINDS:
        pool = [p for p in candidates if p.kind == kind and role_of(p.text, reported) == role]
        pool.sort(key=lambda p: normalize_text(p.text))
        rng.shuffle(pool)
        want = targets[kind]
        if want == 0:
            continue
        if not pool:
            raise SystemExit(f"error: no {kind} prompts have the role {role}")
        k = min(len(combos), max(per_prompt, math.ceil(want / len(pool))))
        n_prompts = min(len(pool), math.ceil(want / k))
        kind_jobs: list[Job] = []
        for prompt in pool[:n_prompts]:
            # k distinct combinations, the least used so far first (ties at random): even use, varied pairs
            ranked = sorted(combos, key=lambda c: (used[c], rng.random()))
            for policy, decoding in ranked[:k]:
                used[(policy, decoding)] += 1
                s = stable_seed(str(seed), prompt.text, policy, decoding)
                kind_jobs.append(Job(prompt, policy, decoding, s))
        if len(kind_jobs) > want:  # trim evenly from the end of a shuffled copy, keep every prompt once
            rng.shuffle(kind_jobs)
            first: dict[str, Job] = {}
            rest: list[Job] = []
            for j in kind_jobs:
                if j.prompt.text in first:
                    rest.append(j)
                else:
                    first[j.prompt.text] = j
            kind_jobs = list(first.values()) + rest[:max(0, want - len(first))]
        jobs.extend(kind_jobs)
    return jobs


# ---------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------
def generate(jobs: list[Job], settings, policies: list[str], max_new_tokens: int, repetition_penalty: float,
             batch_size: int) -> None:
    from rlhf_demo.generation import BASE_ADAPTER, GenerationParams, PolicyServer, build_prompt_ids, decode_batch
    from rlhf_demo.registry import SFT

    server = PolicyServer.from_settings(settings, max_batch=batch_size)
    try:
        for name in policies:
            server.ensure_policy(name)
        tok = server.tokenizer
        for j in jobs:
            j.prompt_ids = build_prompt_ids(tok, [{"role": "user", "content": j.prompt.text}], server.max_prompt_tokens)
        use_adapters = server.model is not server.base
        order = sorted(range(len(jobs)), key=lambda i: (len(jobs[i].prompt_ids), jobs[i].prompt.text, jobs[i].policy,
                                                        jobs[i].decoding))
        t0 = time.monotonic()
        for start in range(0, len(order), batch_size):
            batch = [jobs[i] for i in order[start:start + batch_size]]
            params = []
            for j in batch:
                greedy, temperature, top_p = DECODINGS[j.decoding]
                params.append(GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                               repetition_penalty=repetition_penalty, greedy=greedy, seed=j.seed))
            names = [BASE_ADAPTER if j.policy == SFT else j.policy for j in batch] if use_adapters else None
            results = decode_batch(server.model, tok, [j.prompt_ids for j in batch], params, names)
            for j, r in zip(batch, results):
                j.response = tok.decode(r.token_ids, skip_special_tokens=True).strip()
                j.finish_reason = r.finish_reason
                j.tokens = len(r.token_ids)
            done = min(start + batch_size, len(order))
            print(f"[answers] {done}/{len(order)} answers, {time.monotonic() - t0:.0f}s", file=sys.stderr, flush=True)
    finally:
        server.close()


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------
def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


def write_outputs(jobs: list[Job], split: str, out_dir: Path, seed: int, copy_to: Path | None,
                  name: str | None = None, first_id: int = 1) -> dict[str, Path]:
    """Rows in a seeded random order; ids ``<split>-NNNN`` from ``first_id``; files named ``<name>_*.jsonl``."""
    name = name or split
    rng = random.Random(f"{seed}:{name}:ids")
    rows = list(jobs)
    rows.sort(key=lambda j: (normalize_text(j.prompt.text), j.policy, j.decoding))
    rng.shuffle(rows)
    blind, key, joined = [], [], []
    for i, j in enumerate(rows, start=first_id):
        rid = f"{split}-{i:04d}"
        blind.append({"id": rid, "prompt": j.prompt.text, "response": j.response})
        key.append({"id": rid, "source": j.prompt.source, "prompt_kind": j.prompt.kind, "policy": j.policy,
                    "decoding": j.decoding, "seed": j.seed, "finish_reason": j.finish_reason, "tokens": j.tokens})
        joined.append({"id": rid, "source": j.prompt.source, "prompt_kind": j.prompt.kind, "prompt": j.prompt.text,
                       "response": j.response, "policy": j.policy, "decoding": j.decoding})
    paths = {"blind": out_dir / f"{name}_blind.jsonl", "key": out_dir / f"{name}_key.jsonl",
             "unlabelled": out_dir / f"{name}_unlabelled.jsonl"}
    write_jsonl(paths["blind"], blind)
    write_jsonl(paths["key"], key)
    write_jsonl(paths["unlabelled"], joined)
    if copy_to is not None:
        write_jsonl(copy_to, joined)
        paths["copy"] = copy_to
    return paths


def parse_shares(text: str) -> dict[str, float]:
    try:
        vals = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mix {text!r}: three numbers, e.g. 0.45,0.35,0.20") from None
    if len(vals) != 3 or any(v < 0 for v in vals) or sum(vals) <= 0:
        raise argparse.ArgumentTypeError(f"--mix {text!r}: three non-negative numbers, e.g. 0.45,0.35,0.20")
    return {k: v / sum(vals) for k, v in zip(KINDS, vals)}


def build_parser() -> argparse.ArgumentParser:
    from rlhf_demo.config import add_settings_args

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Writes <split>_blind.jsonl, <split>_key.jsonl and <split>_unlabelled.jsonl.")
    p.add_argument("--split", choices=sorted(SPLIT_ROLE), required=True,
                   help="test: prompts whose role is detector-test; dev: detector-dev")
    p.add_argument("--answers", type=int, default=None,
                   help="number of answers (default: 480 for test, 360 for dev)")
    p.add_argument("--mix", type=parse_shares, default=parse_shares("0.45,0.35,0.20"),
                   help="shares of harmful, risky-safe, ordinary answers (default: 0.45,0.35,0.20)")
    p.add_argument("--policies", nargs="+", default=["sft", "rlhf-v0"],
                   help="policies from the registry that answer (default: sft rlhf-v0)")
    p.add_argument("--decodings", nargs="+", choices=sorted(DECODINGS), default=["greedy", "t0.7", "t1.0"],
                   help="decodings: greedy, t0.7 (temperature 0.7, top-p 0.9), t1.0 (temperature 1.0, top-p 0.9)")
    p.add_argument("--per-prompt", type=int, default=2,
                   help="(policy, decoding) combinations per prompt, more where a kind has too few prompts "
                        "(default: 2)")
    p.add_argument("--answer-tokens", type=int, default=64, help="max new tokens per answer (default: 64)")
    p.add_argument("--repetition-penalty", type=float, default=1.1, help="as in python -m eval (default: 1.1)")
    p.add_argument("--batch-size", type=int, default=48, help="answers decoded per batch (default: 48)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--seed", type=int, default=13, help="seed of prompt choice, sampling and id order (default: 13)")
    p.add_argument("--out-dir", type=Path, default=Path("runs/refusal-answers"),
                   help="where the three files go (default: runs/refusal-answers)")
    p.add_argument("--copy-to", type=Path, default=None,
                   help="also write the joined, unlabelled file here (e.g. eval/fixtures/refusal_dev_unlabelled.jsonl)")
    p.add_argument("--exclude", type=Path, action="append", default=[],
                   help="JSONL file(s) with a 'prompt' field: those prompts are not chosen again (for a "
                        "supplement to an earlier batch); repeatable")
    p.add_argument("--name", default=None, help="file-name stem of the outputs (default: the split)")
    p.add_argument("--first-id", type=int, default=1, help="number of the first id, <split>-NNNN (default: 1)")
    p.add_argument("--dry-run", action="store_true", help="choose prompts and print the plan; generate nothing")
    return add_settings_args(p)


def main(argv: list[str] | None = None) -> int:
    from collections import Counter

    from rlhf_demo.config import settings_from_args

    args = build_parser().parse_args(argv)
    role = SPLIT_ROLE[args.split]
    total = args.answers or (480 if args.split == "test" else 360)
    reported = reported_prompt_keys()
    excluded = set()
    for path in args.exclude:
        excluded.update(normalize_text(row["prompt"]) for _, row in _jsonl_rows(path))
    candidates = [c for c in load_candidates() if normalize_text(c.text) not in excluded]
    jobs = plan_jobs(candidates, role, total, args.mix, args.policies, args.decodings, args.per_prompt,
                     args.seed, reported)
    for j in jobs:  # belt and braces: the role decides, and no reported prompt passes
        assert role_of(j.prompt.text, reported) == role
    print(f"[answers] {args.split}: {len(jobs)} answers to {len({j.prompt.text for j in jobs})} prompts; "
          f"kinds {dict(Counter(j.prompt.kind for j in jobs))}; "
          f"combos {dict(Counter((j.policy, j.decoding) for j in jobs))}", file=sys.stderr, flush=True)
    if args.dry_run:
        print(json.dumps(dict(Counter(j.prompt.source for j in jobs)), indent=1))
        return 0
    import torch

    torch.set_num_threads(max(1, args.threads))
    settings = settings_from_args(args)
    t0 = time.monotonic()
    generate(jobs, settings, args.policies, args.answer_tokens, args.repetition_penalty, args.batch_size)
    paths = write_outputs(jobs, args.split, args.out_dir, args.seed, args.copy_to, args.name, args.first_id)
    print(f"[answers] done in {time.monotonic() - t0:.0f}s: " + ", ".join(f"{k}={v}" for k, v in paths.items()),
          file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
