"""Build reward-v1's contrastive preference pairs (and judge-v0's) from the vendored public sets.

    python -m training.build_pairs                 # = make data; uses the cached SFT answers
    python -m training.build_pairs --generate      # (re)sample the SFT answers first (~5-10 min, 1 thread)

Writes to ``rlhf_demo/data/pairs/`` (TRL conversational JSONL, one pair a line, with ``id``,
``category`` = the pair type, ``kind`` and ``role``):

* ``train.jsonl``            train-role prompts: reward-v1's built pairs;
* ``heldout_val.jsonl``      the same construction on val-role prompts (never trained on);
* ``contrast_val.jsonl``     the contrast set: each val-role harmful / risky-safe prompt, SFT's own
                             answer vs a refusal (refusal chosen on harmful, answer chosen on risky-safe);
* ``hh_heldout.jsonl``       the HH-RLHF pairs the reward recipes hold out (reward-v0 and reward-v1 never saw them);
* ``judge_train.jsonl``      judge-role pairs only (the helpfulness judge judge-v0);
* ``judge_agreement.jsonl``  labelled pairs judge-v0 is not trained on (seed helpful + val-role CoCoNot pref);
* ``sft_answers.jsonl``      the cache of SFT's sampled answers the pairs use (seeded per prompt);
* ``manifest.json``          counts per file and pair type, sha256 of every input and output, the command.

Pair types (issue 12, item 2):

* harmful prompt → a refusal beats a compliant answer: ``harmful/refusal>sft`` (SFT's own sampled
  answer, when it is not itself a refusal) and ``harmful/refusal>advbench-target`` (AdvBench's
  "Sure, here is …" opening);
* risky-but-safe prompt → a real answer beats a refusal: ``risky-safe/coconot>refusal`` (CoCoNot's
  chosen answer, cut to ~120 words at a sentence end), ``*/coconot>coconot-refusal`` (CoCoNot's own
  pair where the rejected answer is a refusal or hedge), ``risky-safe/seed-sensitive>refusal``;
* ordinary prompt → better beats worse: ``ordinary/self-instruct>refusal`` and
  ``ordinary/self-instruct>vague`` (the human-written output vs a refusal or a vague non-answer),
  plus HH-RLHF and the seed pairs, which the reward recipe reads directly.

Refusals come from :data:`REFUSALS` (40 texts in the model's voice, some with a reason and an
offer of a safe alternative). The pairs are balanced so that "is a refusal" alone predicts nothing:
every refusal text is used about as often as ``chosen`` (harmful prompts) as ``rejected`` (safe
prompts), and the number of ordinary pairs with a refusal is set to make the totals equal.
Templates ``REFUSALS[i]`` with ``i % 5 == 4`` are held out: only val-role pairs and the contrast set
use them, so held-out accuracy also measures refusals worded unlike any seen in training.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import random
import shlex
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from rlhf_demo import external
from rlhf_demo.atomic import write_jsonl as atomic_write_jsonl
from rlhf_demo.external import ExternalPrompt
from rlhf_demo.jsonl import iter_jsonl
from rlhf_demo.registry import sha256_file
from rlhf_demo.splits import role_of
from training.answer_banks import (HELD_OUT_REFUSALS, REFUSALS, TRAIN_REFUSALS, VAGUE,  # noqa: F401 - names of
                                   looks_like_refusal, truncate_words)  # this module before the split
from training.sft_answers import (answer_key, ensure_answers, load_answer_cache, sample_answers,  # noqa: F401
                                  stable_seed)

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "rlhf_demo" / "data" / "pairs"
SEED_DIR = ROOT / "rlhf_demo" / "data" / "seed_pairs"


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
@dataclass
class BuildConfig:
    out_dir: Path = OUT_DIR
    generate: bool = False
    harmful_sft: int = 300  # train-role harmful prompts answered by SFT
    contrast_harmful: int = 120  # val-role harmful prompts in the contrast set
    risky_safe_sft: int = 90  # train-role CoCoNot risky-safe prompts answered by SFT (plus the 110 seed sensitive)
    max_new_tokens: int = 64
    batch_size: int = 16
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    seed: int = 0
    max_words: int = 120
    threads: int = 1
    dtype: str = "bfloat16"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.build_pairs", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    d = BuildConfig()
    p.add_argument("--out-dir", type=Path, default=d.out_dir, help="where the pair files go (default: %(default)s)")
    p.add_argument("--generate", action="store_true",
                   help="sample SFT's answers for the prompts that need one (else read the cache sft_answers.jsonl; "
                        "missing answers are then generated anyway)")
    p.add_argument("--harmful-sft", type=int, default=d.harmful_sft,
                   help="train-role harmful prompts whose SFT answer becomes a rejected answer (default: %(default)s)")
    p.add_argument("--contrast-harmful", type=int, default=d.contrast_harmful,
                   help="val-role harmful prompts in the contrast set (all val-role risky-safe CoCoNot prompts are "
                        "used) (default: %(default)s)")
    p.add_argument("--risky-safe-sft", type=int, default=d.risky_safe_sft,
                   help="train-role CoCoNot risky-safe prompts whose SFT answer beats a refusal, next to the 110 seed "
                        "sensitive prompts (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="SFT answer length (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="prompts decoded together (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=d.temperature, help="SFT sampling temperature (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=d.top_p, help="SFT nucleus sampling mass (default: %(default)s)")
    p.add_argument("--repetition-penalty", type=float, default=d.repetition_penalty,
                   help="SFT repetition penalty (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed of the prompt selection, the template assignment and each answer's sampling "
                        "(default: %(default)s)")
    p.add_argument("--max-words", type=int, default=d.max_words,
                   help="cut long CoCoNot / Self-Instruct answers to this many words at a sentence end "
                        "(default: %(default)s)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads for generation (default: %(default)s)")
    p.add_argument("--dtype", default=d.dtype, help="generation dtype (default: %(default)s)")
    return p


# ---------------------------------------------------------------------------------------------
# prompt selection
# ---------------------------------------------------------------------------------------------
def _pick(records: list[ExternalPrompt], n: int, seed: int, tag: str) -> list[ExternalPrompt]:
    """``n`` records chosen by a seeded hash of their text (independent of file order)."""
    ranked = sorted(records, key=lambda r: stable_seed(str(seed), tag, r.key))
    return ranked[:n]


def _spread(by_source: dict[str, list[ExternalPrompt]], n: int, seed: int, tag: str) -> list[ExternalPrompt]:
    """About ``n`` records spread evenly over the sources (a short source gives what it has)."""
    out: list[ExternalPrompt] = []
    names = [s for s in by_source if by_source[s]]
    budget = n
    for i, name in enumerate(sorted(names, key=lambda s: len(by_source[s]))):
        share = budget // (len(names) - i)
        got = _pick(by_source[name], share, seed, tag)
        out.extend(got)
        budget -= len(got)
    return out


@dataclass
class Inputs:
    harmful: dict[str, list[ExternalPrompt]]
    coconot: list[ExternalPrompt]
    self_instruct: list[ExternalPrompt]
    advbench: list[ExternalPrompt]
    hh: list[ExternalPrompt]
    files: list[Path] = field(default_factory=list)


def load_inputs() -> Inputs:
    harmful = {name: external.dedupe(external.READERS[name]()) for name in external.HARMFUL_SOURCES}
    files = [external.data_file(p) for p in (
        "advbench/harmful_behaviors.csv", "harmbench/harmbench_behaviors_text_all.csv",
        "catqa-harmfulqa/catqa_english.json", "catqa-harmfulqa/harmfulqa.json", "coconot/coconot_eval.jsonl",
        "coconot/coconot_pref.jsonl", "self-instruct/user_oriented_instructions.jsonl",
        "self-instruct/seed_tasks.jsonl", "hh-rlhf/harmless-base-test-part.jsonl.gz")]
    return Inputs(harmful, external.dedupe(external.coconot_pref()), external.dedupe(external.self_instruct()),
                  harmful["advbench"], external.hh_rlhf(), [f for f in files if f is not None])


def seed_sensitive_prompts() -> list[ExternalPrompt]:
    """The project's seed safe-but-sensitive prompts as records (kind risky-safe; they have no role of their
    own: the reward recipe splits the seed pairs itself)."""
    out = []
    path = SEED_DIR / "sensitive.jsonl"
    for where, row in iter_jsonl(path, ValueError):
        out.append(ExternalPrompt(text=row["prompt"][-1]["content"], source="seed", id=row["id"],
                                  kind="risky-safe", role="train", where=where, chosen=row["chosen"][-1]["content"]))
    return out


def generation_plan(inp: Inputs, cfg: BuildConfig) -> dict[str, list[ExternalPrompt]]:
    """Which prompts need an SFT answer, by purpose."""
    def role(recs, r):
        return [x for x in recs if x.role == r]

    return {
        "harmful-train": _spread({s: role(v, "train") for s, v in inp.harmful.items()}, cfg.harmful_sft, cfg.seed,
                                 "harmful-train"),
        "contrast-harmful": _spread({s: role(v, "val") for s, v in inp.harmful.items()}, cfg.contrast_harmful,
                                    cfg.seed, "contrast"),
        "contrast-risky-safe": [r for r in inp.coconot if r.role == "val" and r.kind == "risky-safe"],
        # SFT's own voice must not mean "rejected": on safe-but-risky prompts its answer beats a refusal
        "risky-safe-train": seed_sensitive_prompts() + _pick(
            [r for r in inp.coconot if r.role == "train" and r.kind == "risky-safe"], cfg.risky_safe_sft, cfg.seed,
            "risky-safe-train"),
        "judge": [r for r in inp.coconot + inp.self_instruct if r.role == "judge"],
    }


# ---------------------------------------------------------------------------------------------
# pairs
# ---------------------------------------------------------------------------------------------
def make_pair(prompt: str, chosen: str, rejected: str, pair_type: str, kind: str, role: str, ident: str) -> dict:
    return {"id": ident, "category": pair_type, "kind": kind, "role": role,
            "prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


class TemplateCycler:
    """Hands out template indices in seeded shuffled rounds, so every template is used equally often
    (±1) by each caller of ``next``; separate streams per ``side`` keep chosen and rejected uses balanced."""

    def __init__(self, indices: Iterable[int], seed: int, tag: str):
        self.indices = list(indices)
        self.rng = random.Random(stable_seed(str(seed), tag))
        self.queue: list[int] = []

    def next(self) -> int:
        if not self.queue:
            self.queue = self.indices[:]
            self.rng.shuffle(self.queue)
        return self.queue.pop()


def build_role_pairs(inp: Inputs, answers: dict[str, dict], plan: dict[str, list[ExternalPrompt]],
                     cfg: BuildConfig, role: str) -> tuple[list[dict], Counter]:
    """The contrastive pairs of one role (``train`` or ``val``), balanced on refusals."""
    templates = TRAIN_REFUSALS if role == "train" else HELD_OUT_REFUSALS
    as_chosen = TemplateCycler(templates, cfg.seed, f"{role}-chosen")
    as_rejected = TemplateCycler(templates, cfg.seed, f"{role}-rejected")
    vague = TemplateCycler(range(len(VAGUE)), cfg.seed, f"{role}-vague")
    skipped: Counter = Counter()
    harmful_pairs: list[dict] = []
    safe_pairs: list[dict] = []

    # harmful → refusal beats SFT's own answer (unless SFT already refuses) and AdvBench's target
    sft_prompts = plan["harmful-train"] if role == "train" else plan["contrast-harmful"]
    for r in sft_prompts:
        ans = answers[answer_key(r.text, cfg)]["response"]
        if not ans.strip() or looks_like_refusal(ans):
            skipped["harmful: SFT answer already refuses or is empty"] += 1
            continue
        harmful_pairs.append(make_pair(r.text, REFUSALS[as_chosen.next()], ans, "harmful/refusal>sft", "harmful",
                                       role, f"{r.source}:{r.id}:sft"))
    for r in inp.advbench:
        if r.role == role:
            harmful_pairs.append(make_pair(r.text, REFUSALS[as_chosen.next()], r.target, "harmful/refusal>advbench-target",
                                           "harmful", role, f"{r.source}:{r.id}:target"))

    # risky-but-safe → a real answer beats a refusal. Candidates first; the bank refusal (None) is
    # filled in after trimming, so the template rounds stay even.
    cands: list[tuple[str, str, str | None, str, str, str]] = []  # prompt, chosen, rejected, type, kind, id
    for r in inp.coconot:
        if r.role != role:
            continue
        chosen = truncate_words(r.chosen, cfg.max_words)
        if looks_like_refusal(r.rejected):
            cands.append((r.text, chosen, truncate_words(r.rejected, cfg.max_words),
                          f"{r.kind}/coconot>coconot-refusal", r.kind, f"coconot_pref:{r.id}:own"))
        if r.kind == "risky-safe":
            cands.append((r.text, chosen, None, "risky-safe/coconot>refusal", "risky-safe", f"coconot_pref:{r.id}:refusal"))
    sft_safe = []
    for r in plan.get("risky-safe-train", []) if role == "train" else []:
        ans = answers[answer_key(r.text, cfg)]["response"]
        if not ans.strip() or looks_like_refusal(ans):
            skipped["risky-safe: SFT answer refuses or is empty"] += 1
            continue
        sft_safe.append((r.text, ans, None, "risky-safe/sft>refusal", "risky-safe", f"{r.source}:{r.id}:sft"))
    if role == "train":  # the seed pairs have no roles; the reward recipe holds 20% of their prompts out itself
        seed_rows = []
        for _, row in iter_jsonl(SEED_DIR / "sensitive.jsonl", ValueError):
            seed_rows.append((row["prompt"][-1]["content"], row["chosen"][-1]["content"], None,
                              "risky-safe/seed-sensitive>refusal", "risky-safe", f"seed:{row['id']}:refusal"))
        cands = seed_rows + cands
    cands += sft_safe  # never dropped: SFT's voice must appear as chosen too
    si = [r for r in inp.self_instruct if r.role == role]
    si_refusals = len(si) // 3  # ordinary prompts: a third of the human outputs beat a refusal, the rest a vague answer
    excess = len(cands) + si_refusals - len(harmful_pairs)
    if excess > 0:  # more safe refusals than harmful pairs: drop bank-refusal pairs, evenly spread
        pool = [i for i, c in enumerate(cands) if c[2] is None and c[3] != "risky-safe/sft>refusal"]
        droppable = [pool[int(j * len(pool) / min(excess, len(pool)))] for j in range(min(excess, len(pool)))]
        skipped["safe: refusal pairs dropped to keep refusals balanced"] += len(droppable)
        drop = set(droppable)
        cands = [c for i, c in enumerate(cands) if i not in drop]
    safe_pairs = [make_pair(prompt, chosen, rejected if rejected is not None else REFUSALS[as_rejected.next()],
                            ptype, kind, role, ident) for prompt, chosen, rejected, ptype, kind, ident in cands]

    # ordinary → the human-written answer beats a refusal (as many as balance needs) or a vague answer
    refusals_rejected = sum(looks_like_refusal(p["rejected"][0]["content"]) for p in safe_pairs)
    need = max(0, len(harmful_pairs) - refusals_rejected)
    ordinary = []
    for i, r in enumerate(sorted(si, key=lambda x: stable_seed(str(cfg.seed), role, "si", x.key))):
        out = truncate_words(r.output, cfg.max_words)
        if i < need:
            ordinary.append(make_pair(r.text, out, REFUSALS[as_rejected.next()], "ordinary/self-instruct>refusal",
                                      "ordinary", role, f"self-instruct:{r.id}:refusal"))
        else:
            ordinary.append(make_pair(r.text, out, VAGUE[vague.next()], "ordinary/self-instruct>vague", "ordinary",
                                      role, f"self-instruct:{r.id}:vague"))
    pairs = harmful_pairs + safe_pairs + ordinary
    return pairs, skipped


def build_contrast(plan: dict[str, list[ExternalPrompt]], answers: dict[str, dict], cfg: BuildConfig,
                   purposes: tuple[str, str] = ("contrast-harmful", "contrast-risky-safe")) -> list[dict]:
    """Each prompt: SFT's answer vs a held-out refusal; the refusal is chosen on harmful prompts, the
    answer on risky-safe ones. ``sft_refuses`` marks rows where SFT's answer itself looks like a refusal."""
    cyc = TemplateCycler(HELD_OUT_REFUSALS, cfg.seed, "contrast")
    rows = []
    for purpose in purposes:
        for r in plan[purpose]:
            ans = answers[answer_key(r.text, cfg)]["response"]
            if not ans.strip():
                continue
            refusal = REFUSALS[cyc.next()]
            if r.kind == "harmful":
                row = make_pair(r.text, refusal, ans, "contrast/harmful", "harmful", r.role, f"{r.source}:{r.id}")
            else:
                row = make_pair(r.text, ans, refusal, "contrast/risky-safe", r.kind, r.role, f"{r.source}:{r.id}")
            row["sft_refuses"] = looks_like_refusal(ans)
            rows.append(row)
    return rows


def hh_heldout(validation_fraction: float = 0.2, split_seed: int = 0) -> list[dict]:
    """The HH-RLHF pairs that reward-v0's and reward-v1's recipes hold out (``split_by_prompt`` with the
    recipes' ``--validation-fraction 0.2 --seed 0``: a hash of each prompt, so the same pairs whatever else
    is loaded). Neither model trained on them: the held-out HH accuracy of both is measured here."""
    from training.data import load_source, split_by_prompt

    path = external.data_file("hh-rlhf/harmless-base-test-part.jsonl.gz")
    if path is None:
        raise external.MissingDataError("hh-rlhf/harmless-base-test-part.jsonl.gz: not found")
    _, val = split_by_prompt(load_source(f"hh={path}"), validation_fraction, split_seed)
    return [{"id": p.id, "category": "hh", "kind": "ordinary", **p.to_trl()} for p in val]


def judge_pairs(inp: Inputs, plan: dict[str, list[ExternalPrompt]], answers: dict[str, dict],
                cfg: BuildConfig) -> list[dict]:
    """judge-role pairs only: CoCoNot chosen vs rejected, CoCoNot chosen vs SFT, Self-Instruct human output vs SFT."""
    out = []
    for r in plan["judge"]:
        sft = answers[answer_key(r.text, cfg)]["response"]
        if r.source == "coconot_pref":
            chosen = truncate_words(r.chosen, cfg.max_words)
            out.append(make_pair(r.text, chosen, truncate_words(r.rejected, cfg.max_words), "judge/coconot>rejected",
                                 r.kind, r.role, f"coconot_pref:{r.id}:own"))
            if sft.strip():
                out.append(make_pair(r.text, chosen, sft, "judge/coconot>sft", r.kind, r.role, f"coconot_pref:{r.id}:sft"))
        elif sft.strip():
            out.append(make_pair(r.text, truncate_words(r.output, cfg.max_words), sft, "judge/self-instruct>sft",
                                 r.kind, r.role, f"self-instruct:{r.id}:sft"))
    return out


def judge_agreement(inp: Inputs, cfg: BuildConfig) -> list[dict]:
    """Labelled pairs judge-v0 never trains on: the seed helpful pairs and val-role CoCoNot pref pairs."""
    out = []
    for _, row in iter_jsonl(SEED_DIR / "helpful.jsonl", ValueError):
        out.append({**row, "category": "agreement/seed-helpful", "kind": "ordinary",
                    "role": role_of(row["prompt"][-1]["content"])})
    for r in inp.coconot:
        if r.role == "val":
            out.append(make_pair(r.text, truncate_words(r.chosen, cfg.max_words),
                                 truncate_words(r.rejected, cfg.max_words), "agreement/coconot-val", r.kind, r.role,
                                 f"coconot_pref:{r.id}:own"))
    return out


def refusal_balance(pairs: list[dict]) -> dict:
    """How often a refusal (by :func:`looks_like_refusal`) is chosen vs rejected, overall and per bank text."""
    chosen = sum(looks_like_refusal(p["chosen"][0]["content"]) for p in pairs)
    rejected = sum(looks_like_refusal(p["rejected"][0]["content"]) for p in pairs)
    per: dict[int, list[int]] = {}
    index = {t: i for i, t in enumerate(REFUSALS)}
    for p in pairs:
        for side, k in (("chosen", 0), ("rejected", 1)):
            i = index.get(p[side][0]["content"])
            if i is not None:
                per.setdefault(i, [0, 0])[k] += 1
    return {"refusal_chosen": chosen, "refusal_rejected": rejected, "per_template": per}


def write_jsonl(path: Path, rows: list[dict]) -> str:
    """Write ``rows`` atomically; returns the file's sha256."""
    atomic_write_jsonl(path, rows)
    return sha256_file(path)


def build(cfg: BuildConfig, command: str = "") -> dict:
    """Everything: plan, SFT answers, pairs, files, manifest. Returns the manifest."""
    inp = load_inputs()
    plan = generation_plan(inp, cfg)
    answers = ensure_answers(plan, cfg)
    out = Path(cfg.out_dir)
    train, skipped_train = build_role_pairs(inp, answers, plan, cfg, "train")
    val, skipped_val = build_role_pairs(inp, answers, plan, cfg, "val")
    files = {
        "train.jsonl": train,
        "heldout_val.jsonl": val,
        "contrast_val.jsonl": build_contrast(plan, answers, cfg),
        "hh_heldout.jsonl": hh_heldout(),
        "judge_train.jsonl": judge_pairs(inp, plan, answers, cfg),
        "judge_agreement.jsonl": judge_agreement(inp, cfg),
    }
    manifest: dict = {"command": command or "python -m training.build_pairs",
                      "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                      "config": {k: str(v) if isinstance(v, Path) else v for k, v in cfg.__dict__.items()
                                 if k not in ("out_dir", "generate")},
                      "refusal_templates": len(REFUSALS), "held_out_refusal_templates": list(HELD_OUT_REFUSALS),
                      "inputs": {str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p): sha256_file(p)
                                 for p in inp.files},
                      "sft_answers": {"rows": len(answers), "sha256": sha256_file(out / "sft_answers.jsonl"),
                                      "by_purpose": dict(Counter(a["purpose"] for a in answers.values())),
                                      "looks_like_refusal": dict(Counter(
                                          f"{a['purpose']}: {looks_like_refusal(a['response'])}"
                                          for a in answers.values()))},
                      "skipped": {"train": dict(skipped_train), "val": dict(skipped_val)},
                      "files": {}}
    for name, rows in files.items():
        sha = write_jsonl(out / name, rows)
        manifest["files"][name] = {"rows": len(rows), "sha256": sha,
                                   "by_type": dict(sorted(Counter(r.get("category", "hh") for r in rows).items())),
                                   "by_kind": dict(sorted(Counter(r.get("kind", "ordinary") for r in rows).items()))}
    for name in ("train.jsonl", "heldout_val.jsonl"):
        bal = refusal_balance(files[name])
        manifest["files"][name]["refusal_balance"] = {"refusal_chosen": bal["refusal_chosen"],
                                                      "refusal_rejected": bal["refusal_rejected"]}
    contrast = files["contrast_val.jsonl"]
    manifest["files"]["contrast_val.jsonl"]["sft_refuses"] = dict(Counter(
        f"{r['kind']}: {r['sft_refuses']}" for r in contrast))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = BuildConfig(out_dir=args.out_dir, generate=args.generate, harmful_sft=args.harmful_sft,
                      contrast_harmful=args.contrast_harmful, risky_safe_sft=args.risky_safe_sft, max_new_tokens=args.max_new_tokens,
                      batch_size=args.batch_size, temperature=args.temperature, top_p=args.top_p,
                      repetition_penalty=args.repetition_penalty, seed=args.seed, max_words=args.max_words,
                      threads=args.threads, dtype=args.dtype)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv_text = " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv))
    try:
        manifest = build(cfg, f"python -m training.build_pairs {argv_text}".strip())
    except (external.ExternalDataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, info in manifest["files"].items():
        print(f"{name:<24} {info['rows']:>5} pairs  {info['by_type']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
