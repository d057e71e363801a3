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
import hashlib
import json
import os
import random
import re
import shlex
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from rlhf_demo import external
from rlhf_demo.external import ExternalPrompt
from rlhf_demo.splits import normalize_text, role_of

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "rlhf_demo" / "data" / "pairs"
SEED_DIR = ROOT / "rlhf_demo" / "data" / "seed_pairs"

# ---------------------------------------------------------------------------------------------
# answer banks
# ---------------------------------------------------------------------------------------------
REFUSALS: tuple[str, ...] = (
    "I'm sorry, but I can't help with that.",
    "I can't help with that request.",
    "Sorry, I can't assist with this.",
    "I won't be able to help with that.",
    "I'm not able to help with this one.",
    "I'm sorry, but I can't provide that. It could cause real harm to people.",
    "I can't help with that, because it could put someone in danger. If you'd like, I can help with something related that's safe.",
    "Sorry, that's not something I can do. Is there something else I can help you with?",
    "I'm afraid I can't do that. I'd be glad to help with a different question, though.",
    "I can't assist with this request. It goes against my guidelines on safety.",
    "I'm sorry, I can't help with that. If you're dealing with a difficult situation, talking to someone you trust or a professional can really help.",
    "That's not something I can help with. I'd be happy to talk about the topic in general terms instead.",
    "I have to decline this one. It could be used to hurt people, and I don't want to contribute to that.",
    "I'm sorry, but I'm not comfortable helping with that.",
    "I can't provide instructions for that. Is there another way I can help?",
    "Sorry, I can't do that. It might be illegal or dangerous, and I don't want to put anyone at risk.",
    "I'm not going to help with this, but I can point you to general safety information if that's useful.",
    "Unfortunately, I can't help with that request.",
    "I'm sorry, but I can't answer that.",
    "I can't help you with this. If you have a different question, feel free to ask.",
    "As an AI assistant, I can't help with that.",
    "I'm sorry, this is something I can't assist with. Please consider a safer alternative.",
    "I'd rather not help with that, since it could lead to harm. Let me know if there's something else you need.",
    "I can't do that. Helping with this could hurt you or other people.",
    "I'm sorry, but I must decline. I can help you find legitimate resources on the subject instead.",
    "No, I can't help with that.",
    "I'm unable to help with that request.",
    "Sorry, but I can't go along with that. Can I help you with something else?",
    "I can't give you that information. It could be misused to cause harm.",
    "I'm sorry, I can't write that. I'm happy to help with a different piece of writing, though.",
    "That's something I can't help with. If you're curious about the topic, I can share some general, safe background.",
    "I'm going to pass on this one, sorry.",
    "I'm sorry, but I can't support that. It may break the law and hurt others.",
    "I can't assist with that, but I'm glad to help with any other question you have.",
    "I'm not able to provide that. Safety matters, and this could be dangerous.",
    "Sorry, I can't help here. Maybe I can help with a related question that doesn't involve any risk?",
    "I'm sorry, but I won't help with that request.",
    "I don't think I should help with that. Is there anything else on your mind?",
    "I'm sorry, I can't provide help with this. If you need support, please reach out to a qualified professional.",
    "I can't help with this request because it could cause harm. I can suggest some safer options if you'd like.",
)
HELD_OUT_REFUSALS = tuple(i for i in range(len(REFUSALS)) if i % 5 == 4)
TRAIN_REFUSALS = tuple(i for i in range(len(REFUSALS)) if i % 5 != 4)

VAGUE: tuple[str, ...] = (
    "That's a great question! There are many different factors to consider, and the answer really depends on your situation.",
    "It depends. Everyone is different, so you should think about what works best for you.",
    "There are many ways to approach this. You could try a few things and see what works.",
    "That's an interesting topic. Many people have different opinions about it, so it's hard to say.",
    "Sure! This is something a lot of people wonder about. The answer can vary a lot depending on the details.",
    "Good question. I would recommend doing some research and looking at different sources.",
    "Here is an answer: it really depends on the context and on what you are looking for.",
    "There isn't one right answer to this. It is best to consider all the options carefully.",
    "Yes, that is possible. There are several things to keep in mind, and it depends on the situation.",
    "I think the best approach is to take it step by step and see how it goes.",
)

REFUSAL_RE = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry|i apologi[sz]e|i can'?t|i cannot|i can not|i won'?t|i will not|i'?m not able|"
    r"i am not able|i'?m unable|i am unable|as an ai|as a language model|unfortunately,? i|i must decline|"
    r"i do not feel comfortable|i don'?t feel comfortable|i'?m afraid i|no,? i can'?t)", re.I)
REFUSAL_ANY_RE = re.compile(r"\b(i can'?t (help|assist|provide)|i cannot (help|assist|provide)|"
                            r"i'?m (not able|unable) to (help|assist|provide)|as an ai( language model)?,? i|"
                            r"not something i can|i have to decline|i'?m not going to help|i'?d rather not help|"
                            r"pass on this|i don'?t think i should)", re.I)


def looks_like_refusal(text: str) -> bool:
    """A rough rule for building data (NOT the project's refusal judge): does the answer open with, or
    state early, that it will not do the task? Used to drop SFT answers that already refuse from the
    "compliant" side and to find CoCoNot's refusing/hedging rejected answers."""
    head = text.strip()[:200]
    return bool(REFUSAL_RE.match(head) or REFUSAL_ANY_RE.search(head))


_SENT_END = re.compile(r"(?<=[^\d\s][.!?])[\"')\]*]*(?=\s)|(?<=\S)(?=\n\n)")


def truncate_words(text: str, max_words: int = 120, min_keep: float = 0.4) -> str:
    """At most ``max_words`` words, cut at the last sentence end (``. ! ?`` or a paragraph break) inside
    them; when no sentence ends after ``min_keep`` of the budget, cut at the word and add "…".
    Whitespace inside the kept part is preserved."""
    words = list(re.finditer(r"\S+", text))
    if len(words) <= max_words:
        return text.strip()
    end = words[max_words - 1].end()
    head = text[:end]
    cuts = [m.end() for m in _SENT_END.finditer(head + " ")]
    floor = words[max(0, int(max_words * min_keep) - 1)].end()
    good = [c for c in cuts if c >= floor]
    if good:
        kept = head[:good[-1]].rstrip().split("\n")
        while len(kept) > 1 and (kept[-1].lstrip().startswith("#") or not kept[-1].strip()):
            kept.pop()  # no dangling heading at the end
        return "\n".join(kept).rstrip()
    return head.rstrip().rstrip(",;") + " …"


def stable_seed(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x00".join(parts).encode()).digest()[:4], "big")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            row = json.loads(line)
            out.append(ExternalPrompt(text=row["prompt"][-1]["content"], source="seed", id=row["id"],
                                      kind="risky-safe", role="train", where=f"{path}:{lineno}",
                                      chosen=row["chosen"][-1]["content"]))
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
# SFT answers
# ---------------------------------------------------------------------------------------------
def answer_key(text: str, cfg: BuildConfig) -> str:
    return f"{normalize_text(text)}\x00{cfg.max_new_tokens}\x00{cfg.temperature}\x00{cfg.top_p}\x00" \
           f"{cfg.repetition_penalty}\x00{cfg.seed}"


def sample_answers(texts: list[str], cfg: BuildConfig, settings=None, progress: bool = True) -> list[dict]:
    """SFT's answers to ``texts`` with the project's batched decoder, 1 thread, each row seeded by
    (``cfg.seed``, prompt), so an answer does not depend on its batch. Rows: prompt, response,
    finish_reason, seed."""
    import torch

    from rlhf_demo.base_model import load_base_model
    from rlhf_demo.config import Settings
    from rlhf_demo.generation import GenerationParams, build_prompt_ids, decode_batch

    torch.set_num_threads(cfg.threads)
    settings = settings or Settings(dtype=cfg.dtype, device="cpu")
    model, tok = load_base_model(settings)
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths together: less padding
    out: list[dict | None] = [None] * len(texts)
    t0 = time.time()
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start:start + cfg.batch_size]
        prompts = [build_prompt_ids(tok, [{"role": "user", "content": texts[i]}], 512) for i in idx]
        params = [GenerationParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                   repetition_penalty=cfg.repetition_penalty,
                                   seed=stable_seed(str(cfg.seed), normalize_text(texts[i]))) for i in idx]
        results = decode_batch(model, tok, prompts, params)
        for i, p, r in zip(idx, params, results):
            out[i] = {"prompt": texts[i], "response": tok.decode(r.token_ids, skip_special_tokens=True).strip(),
                      "finish_reason": r.finish_reason, "seed": p.seed}
        if progress:
            done = start + len(idx)
            print(f"[build_pairs] SFT answers {done}/{len(texts)} ({time.time() - t0:.0f} s)", file=sys.stderr,
                  flush=True)
    return out  # type: ignore[return-value]


def load_answer_cache(path: Path) -> dict[str, dict]:
    cache: dict[str, dict] = {}
    if not path.is_file():
        return cache
    for lineno, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            cache[row["key"]] = row
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{lineno}: bad SFT-answer cache row ({exc})") from exc
    return cache


def ensure_answers(plan: dict[str, list[ExternalPrompt]], cfg: BuildConfig) -> dict[str, dict]:
    """The SFT answer of every planned prompt: from the cache, generating what is missing (or all, with
    ``cfg.generate``). The cache file is rewritten with exactly the planned prompts, sorted."""
    path = Path(cfg.out_dir) / "sft_answers.jsonl"
    cache = {} if cfg.generate else load_answer_cache(path)
    wanted: dict[str, tuple[str, str, ExternalPrompt]] = {}
    for purpose, recs in plan.items():
        for r in recs:
            wanted.setdefault(answer_key(r.text, cfg), (purpose, r.text, r))
    missing = [k for k in wanted if k not in cache]
    if missing:
        print(f"[build_pairs] sampling SFT answers for {len(missing)} prompts ({cfg.max_new_tokens} tokens, "
              f"{cfg.threads} thread(s))", file=sys.stderr, flush=True)
        rows = sample_answers([wanted[k][1] for k in missing], cfg)
        for k, row in zip(missing, rows):
            purpose, _, rec = wanted[k]
            cache[k] = {"key": k, **row, "source": rec.source, "id": rec.id, "kind": rec.kind, "role": rec.role,
                        "purpose": purpose, "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
                        "top_p": cfg.top_p, "repetition_penalty": cfg.repetition_penalty}
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for k in sorted(wanted):
            fh.write(json.dumps(cache[k], ensure_ascii=False, sort_keys=True) + "\n")
    return {k: cache[k] for k in wanted}


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
        for line in (SEED_DIR / "sensitive.jsonl").read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
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
    for line in (SEED_DIR / "helpful.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
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
