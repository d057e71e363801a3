"""Preference pairs and prompt sets for the reward model and PPO.

Preference sources (combine them with a repeatable ``--data``):

* ``seed``            the project's seed pairs, ``rlhf_demo/data/seed_pairs/*.jsonl``;
* ``arena``           the feedback database, through :func:`rlhf_demo.export.export_pairs`;
* ``PATH``            a JSONL file (``.jsonl`` or ``.jsonl.gz``) in any of these row formats:

  - TRL conversational: ``{"prompt": [messages], "chosen": [assistant msg], "rejected": [...]}``
    (or implicit prompt: ``chosen``/``rejected`` are whole conversations),
  - TRL standard: ``{"prompt": "text", "chosen": "text", "rejected": "text"}``,
  - HH-RLHF text: ``{"chosen": "\\n\\nHuman: …\\n\\nAssistant: …", "rejected": …}``,

  each with an optional ``"margin"`` (a number; how much better ``chosen`` is);
* ``hub:ID[:SPLIT]``  a dataset from the hub (only with ``--online``), rows in the formats above.

Any source takes a ``:N`` suffix (the first N pairs: ``seed:100``, ``hh.jsonl.gz:500``) and a
``NAME=`` prefix that names it in the metrics (``hh=../shared/data/hh-rlhf/x.jsonl.gz``).

Every source is normalised to :class:`PreferencePair`. A bad row raises :class:`DataError` naming
``file:line`` and what is wrong (bad JSON, NUL byte, invalid UTF-8, missing field, empty text);
``skip_invalid=True`` skips such rows with a warning instead. The train/validation split is by
prompt (a hash of the normalised prompt), so no prompt is on both sides.

Prompt sets for PPO (:func:`load_prompts`) come from the seed PPO prompts, the arena, ``.txt`` (one
prompt a line) or ``.jsonl`` files; anything that is also an evaluation prompt (XSTest, when
present, and ``rlhf_demo/data/eval_prompts.jsonl``) is dropped, or refused with ``on_overlap="error"``.

Pairs are tokenised once (:func:`encode_pair`) into a shared prefix plus the two answers, and a
batch packs each pair into ONE row — ``[prefix | chosen | rejected]`` — with an attention mask that
hides the chosen answer from the rejected one (:func:`collate_pairs`): the prompt is computed once
per pair instead of twice, and length-grouped batches (:func:`batch_order`) leave little padding.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from rlhf_demo.jsonl import iter_jsonl, text_field  # one strict JSONL reader, file:line errors
from rlhf_demo.splits import data_file, normalize_text, reported_prompt_keys  # one normalisation, one "reported" rule

log = logging.getLogger(__name__)

PACKAGE_DATA = Path(__file__).resolve().parents[1] / "rlhf_demo" / "data"
SEED_PAIRS_DIR = PACKAGE_DATA / "seed_pairs"
PPO_PROMPTS = PACKAGE_DATA / "ppo_prompts.jsonl"
EVAL_PROMPTS = PACKAGE_DATA / "eval_prompts.jsonl"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# the vendored copy (rlhf_demo/data/external) first, ../shared/data second
XSTEST_CSV = data_file("xstest/xstest_prompts.csv") or SHARED_DATA / "xstest" / "xstest_prompts.csv"
ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """A data source or row that cannot be used; the message names ``file:line`` where it can."""


# ---------------------------------------------------------------------------------------------
# records
# ---------------------------------------------------------------------------------------------
@dataclass
class PreferencePair:
    """One preference: after ``prompt`` (chat messages), ``chosen`` beats ``rejected``."""

    prompt: list[dict]
    chosen: str
    rejected: str
    margin: float | None = None
    source: str = ""
    id: str | None = None
    category: str | None = None

    def conversation(self, which: str) -> list[dict]:
        """The prompt plus the ``"chosen"`` or ``"rejected"`` answer as the last assistant message."""
        return self.prompt + [{"role": "assistant", "content": getattr(self, which)}]

    def to_trl(self) -> dict:
        row = {"prompt": self.prompt, "chosen": [{"role": "assistant", "content": self.chosen}],
               "rejected": [{"role": "assistant", "content": self.rejected}]}
        if self.margin is not None:
            row["margin"] = self.margin
        return row


@dataclass
class PromptItem:
    """A prompt for PPO rollouts."""

    messages: list[dict]
    source: str = ""
    id: str | None = None
    category: str | None = None

    @property
    def text(self) -> str:
        return self.messages[-1]["content"]


@dataclass
class SourceSpec:
    name: str
    kind: str  # seed | arena | file | hub
    target: str = ""
    limit: int | None = None
    split: str = "train"


# ---------------------------------------------------------------------------------------------
# normalisation and keys
# ---------------------------------------------------------------------------------------------
def prompt_key(messages: list[dict]) -> str:
    """A stable key of a prompt: its normalised messages, role by role."""
    return "\n".join(f"{m['role']}: {normalize_text(m['content'])}" for m in messages)


def _hash_unit(text: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}\x00{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_by_prompt(pairs: list[PreferencePair], validation_fraction: float, seed: int = 0
                    ) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Deterministic train/validation split by prompt: every pair of one prompt lands on the same side.

    A prompt goes to validation when a seeded hash of its normalised key falls below
    ``validation_fraction``, so the split does not depend on the order or on the other pairs.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {validation_fraction}")
    train, val = [], []
    for p in pairs:
        (val if _hash_unit(prompt_key(p.prompt), seed) < validation_fraction else train).append(p)
    return train, val


# ---------------------------------------------------------------------------------------------
# reading and validating files
# ---------------------------------------------------------------------------------------------
def read_jsonl(path: Path, on_error: Callable[[DataError], None] | None = None) -> Iterator[tuple[str, dict]]:
    """Yield ``("file:line", row)`` for every non-blank line.

    A bad line raises DataError naming ``file:line`` — or, with ``on_error``, is handed to it and skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    yield from iter_jsonl(path, DataError, on_error)


def _text(value, where: str, name: str, allow_empty: bool = False) -> str:
    return text_field(value, where, name, DataError, allow_empty)


def _messages(value, where: str, name: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field {name!r} must be a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: {name}[{i}] must be an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise DataError(f"{where}: {name}[{i}] has role {m['role']!r}; expected one of {ROLES}")
        out.append({"role": m["role"], "content": _text(m["content"], where, f"{name}[{i}].content")})
    return out


HH_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")


def hh_to_messages(text: str, where: str = "", name: str = "text") -> list[dict]:
    """``"\\n\\nHuman: …\\n\\nAssistant: …"`` → chat messages (an empty last answer is kept)."""
    parts = HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise DataError(f"{where}: field {name!r} is not HH-RLHF text ('\\n\\nHuman: …\\n\\nAssistant: …')")
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role = "user" if speaker == "Human" else "assistant"
        content = content.strip()
        if messages and messages[-1]["role"] == role:  # an inline repeated speaker: one message
            messages[-1]["content"] += f"\n\n{speaker}: {content}"
        else:
            messages.append({"role": role, "content": content})
    return messages


def _split_hh(chosen: str, rejected: str, where: str) -> tuple[list[dict], str, str]:
    """Prompt = the common transcript up to the last ``Assistant:`` both share; answers = the rest."""
    n = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        n += 1
    cut = chosen.rfind("\n\nAssistant:", 0, n)
    if cut < 0:
        raise DataError(f"{where}: chosen and rejected share no '\\n\\nAssistant:' turn")
    prompt = hh_to_messages(chosen[:cut], where, "chosen")
    if prompt[-1]["role"] != "user":
        raise DataError(f"{where}: the prompt must end with a Human turn")
    if not any(m["content"] for m in prompt if m["role"] == "user"):
        raise DataError(f"{where}: the prompt is empty")
    texts = []
    for t in (chosen, rejected):  # the answer; a later inline "Human:" turn stays part of its text
        msgs = hh_to_messages("\n\nHuman: x" + t[cut:], where)[1:]
        texts.append("\n\n".join(m["content"] if m["role"] == "assistant" else f"Human: {m['content']}"
                                   for m in msgs))
    return prompt, texts[0], texts[1]


def _margin(row: dict, where: str) -> float | None:
    m = row.get("margin")
    if m is None:
        return None
    if isinstance(m, bool) or not isinstance(m, (int, float)) or m != m:
        raise DataError(f"{where}: field 'margin' must be a number, got {m!r}")
    return float(m)


def pair_from_row(row: dict, where: str, source: str) -> PreferencePair | None:
    """Normalise one row (TRL conversational, TRL standard or HH-RLHF text); None for identical answers."""
    for name in ("chosen", "rejected"):
        if name not in row:
            raise DataError(f"{where}: missing field {name!r}")
    chosen, rejected, prompt = row["chosen"], row["rejected"], row.get("prompt")
    if isinstance(chosen, list) or isinstance(rejected, list):  # conversational
        c = _messages(chosen, where, "chosen")
        r = _messages(rejected, where, "rejected")
        if prompt is None:  # implicit prompt: the shared start of both conversations
            k = 0
            while k < min(len(c), len(r)) - 1 and c[k] == r[k]:
                k += 1
            p, c, r = c[:k], c[k:], r[k:]
        else:
            p = _messages(prompt, where, "prompt") if isinstance(prompt, list) else [
                {"role": "user", "content": _text(prompt, where, "prompt")}]
        if len(c) != 1 or len(r) != 1 or c[0]["role"] != "assistant" or r[0]["role"] != "assistant":
            raise DataError(f"{where}: 'chosen' and 'rejected' must each end in ONE assistant message "
                            "after the prompt")
        if not p or p[-1]["role"] != "user":
            raise DataError(f"{where}: the prompt must end with a user message")
        ctext, rtext = c[0]["content"], r[0]["content"]
    else:
        ctext = _text(chosen, where, "chosen", allow_empty=prompt is None)
        rtext = _text(rejected, where, "rejected", allow_empty=prompt is None)
        if prompt is None and ("\n\nAssistant:" in ctext and "\n\nHuman:" in ctext):
            p, ctext, rtext = _split_hh(ctext, rtext, where)  # HH text: an empty answer is real data
        elif prompt is None:
            raise DataError(f"{where}: missing field 'prompt' (and the text is not HH-RLHF format)")
        elif isinstance(prompt, list):
            p = _messages(prompt, where, "prompt")
        else:
            p = [{"role": "user", "content": _text(prompt, where, "prompt")}]
    if ctext.strip() == rtext.strip():
        return None
    return PreferencePair(p, ctext, rtext, _margin(row, where), source,
                          str(row["id"]) if row.get("id") is not None else None,
                          row.get("category") if isinstance(row.get("category"), str) else None)


# ---------------------------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------------------------
def parse_source(spec: str) -> SourceSpec:
    """``[NAME=]seed|arena|hub:ID[:SPLIT]|PATH`` with an optional ``:N`` (first N pairs); for prompts also
    ``mix[:harmful=N,risky=N,ordinary=N]`` (:func:`public_mix_prompts`)."""
    spec = spec.strip()
    if spec == "mix" or spec.startswith("mix:"):
        return SourceSpec("mix", "mix", spec[4:])
    name = None
    m = re.match(r"^([A-Za-z][\w.-]*)=(.+)$", spec)
    if m and not Path(spec).exists():
        name, spec = m.group(1), m.group(2)
    limit = None
    m = re.match(r"^(.*):(\d+)$", spec)
    if m and not Path(spec).exists():
        spec, limit = m.group(1), int(m.group(2))
        if limit <= 0:
            raise DataError(f"--data {spec}:{limit}: N must be positive")
    if spec in ("seed", "arena"):
        return SourceSpec(name or spec, spec, "", limit)
    if spec.startswith("hub:"):
        ident, _, split = spec[4:].partition(":")
        if not ident:
            raise DataError("--data hub:ID needs a dataset id, e.g. hub:Anthropic/hh-rlhf")
        return SourceSpec(name or ident, "hub", ident, limit, split or "train")
    path = Path(spec).expanduser()
    stem = path.name
    for ext in (".gz", ".jsonl", ".json"):
        stem = stem[: -len(ext)] if stem.endswith(ext) else stem
    return SourceSpec(name or stem, "file", str(path), limit)


def _rows_from_hub(spec: SourceSpec, settings) -> Iterator[tuple[str, dict]]:
    if settings is None or not settings.online:
        raise DataError(f"--data hub:{spec.target} downloads from the hub: add --online")
    from datasets import load_dataset

    ds = load_dataset(spec.target, split=spec.split)
    for i, row in enumerate(ds, start=1):
        yield f"hub:{spec.target}[{spec.split}]:{i}", dict(row)


def _rows_from_arena(settings) -> Iterator[tuple[str, dict]]:
    if settings is None:
        raise DataError("--data arena needs the settings (data dir or --db-url) of the feedback database")
    try:
        from rlhf_demo.export import export_pairs
        from rlhf_demo.store import Store
    except ImportError as exc:  # pragma: no cover - the arena modules ship with the project
        raise DataError(f"--data arena: the export code is not available ({exc})") from exc
    if not settings.db_url and not (settings.data_dir / "feedback.db").is_file():
        raise DataError(f"--data arena: no feedback database at {settings.data_dir / 'feedback.db'} "
                        "(wrong --data-dir? or give --db-url)")
    result = export_pairs(Store.from_settings(settings))
    log.info("arena: %s", result.summary())
    for i, row in enumerate(result.pairs, start=1):
        yield f"arena:pair {i}", row


def load_source(spec: SourceSpec | str, settings=None, skip_invalid: bool = False,
                stats: Counter | None = None) -> list[PreferencePair]:
    """All pairs of one source (its first ``limit`` when given)."""
    spec = parse_source(spec) if isinstance(spec, str) else spec
    stats = stats if stats is not None else Counter()

    def bad_line(exc: DataError) -> None:
        stats[f"{spec.name}: invalid"] += 1
        log.warning("skipping %s", exc)

    on_error = bad_line if skip_invalid else None
    if spec.kind == "seed":
        files = sorted(SEED_PAIRS_DIR.glob("*.jsonl"))
        if not files:
            raise DataError(f"no seed pairs in {SEED_PAIRS_DIR}")
        rows: Iterable[tuple[str, dict]] = (r for f in files for r in read_jsonl(f, on_error))
    elif spec.kind == "arena":
        rows = _rows_from_arena(settings)
    elif spec.kind == "hub":
        rows = _rows_from_hub(spec, settings)
    else:
        rows = read_jsonl(Path(spec.target), on_error)
    pairs: list[PreferencePair] = []
    for where, row in rows:
        try:
            pair = pair_from_row(row, where, spec.name)
        except DataError as exc:
            if not skip_invalid:
                raise
            bad_line(exc)
            continue
        if pair is None:
            stats[f"{spec.name}: identical answers"] += 1
            continue
        if pair.category is None and spec.kind == "seed":
            pair.category = pair.id.split("-")[0] if pair.id else None
        pairs.append(pair)
        if spec.limit and len(pairs) >= spec.limit:
            break
    if not pairs:
        raise DataError(f"--data {spec.name}: no usable preference pairs")
    return pairs


def load_pairs(specs: Iterable[str], settings=None, skip_invalid: bool = False) -> list[PreferencePair]:
    """Pairs of every source, in order. Skipped rows are logged."""
    stats: Counter = Counter()
    out: list[PreferencePair] = []
    for spec in specs:
        out.extend(load_source(spec, settings, skip_invalid, stats))
    for what, n in stats.items():
        log.info("skipped %d rows (%s)", n, what)
    return out


# ---------------------------------------------------------------------------------------------
# tokenisation and packed batches
# ---------------------------------------------------------------------------------------------
@dataclass
class EncodedPair:
    """Token ids of a pair: the shared prefix (templated prompt) and the two answers' own tokens."""

    prefix: list[int]
    chosen: list[int]
    rejected: list[int]
    index: int = 0  # position in the pair list it came from
    margin: float | None = None
    source: str = ""
    category: str | None = None
    truncated: bool = False

    @property
    def length(self) -> int:  # the packed row length
        return len(self.prefix) + len(self.chosen) + len(self.rejected)


def encode_conversation(tokenizer, messages: list[dict]) -> list[int]:
    """Chat-template a whole conversation (prompt and answer) into token ids."""
    enc = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)
    return list(enc["input_ids"])


def encode_pair(tokenizer, pair: PreferencePair, max_length: int, index: int = 0) -> EncodedPair:
    """Tokenise both conversations; split them at their longest common prefix.

    Each conversation (prefix + its answer) is kept within ``max_length`` tokens: the oldest
    prompt tokens go first; when an answer would leave less than a quarter of ``max_length`` for
    the prompt, the answer is cut at its end instead.
    """
    c = encode_conversation(tokenizer, pair.conversation("chosen"))
    r = encode_conversation(tokenizer, pair.conversation("rejected"))
    n = 0
    for a, b in zip(c, r):
        if a != b:
            break
        n += 1
    n = min(n, len(c) - 1, len(r) - 1)  # each answer keeps at least one token of its own
    prefix, ca, ra = c[:n], c[n:], r[n:]
    truncated = False
    longest = max(len(ca), len(ra))
    if len(prefix) + longest > max_length:
        truncated = True
        keep = max(max_length - longest, min(len(prefix), max_length // 4))  # some prompt always stays
        prefix = prefix[len(prefix) - keep:] if keep > 0 else []
        room = max_length - len(prefix)
        ca, ra = ca[:room], ra[:room]
    return EncodedPair(prefix, ca, ra, index, pair.margin, pair.source, pair.category, truncated)


def batch_order(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool = True,
                mega: int = 32) -> list[list[int]]:
    """The batches of one epoch (lists of indices), deterministic in (seed, epoch).

    Length grouping (as TRL/transformers' ``group_by_length``): shuffle, cut into mega-batches of
    ``mega`` batches, sort each mega-batch by length, cut into batches, shuffle the batches. Rows of
    a batch then have similar lengths, so padding is small, while the order stays random.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    if not group_by_length:
        return [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    batches = []
    step = batch_size * mega
    for start in range(0, len(idx), step):
        chunk = sorted(idx[start:start + step], key=lambda i: -lengths[i])
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


@dataclass
class PairBatch:
    """A packed batch: one row per pair, ``[prefix | chosen | rejected | pad]``.

    ``attention_mask`` is ``[B, 1, T, T]`` bool (True = may attend): causal, and the rejected
    answer does not see the chosen one. ``position_ids`` restart the rejected answer right after
    the prefix, so each answer is computed exactly as in its own sequence. Rewards are read at
    ``chosen_index`` / ``rejected_index`` (the last token of each conversation).
    """

    input_ids: "torch.Tensor"
    attention_mask: "torch.Tensor"
    position_ids: "torch.Tensor"
    chosen_index: "torch.Tensor"
    rejected_index: "torch.Tensor"
    margin: "torch.Tensor | None"
    lm_index: "torch.Tensor"  # [B, C] positions whose next token is a chosen-answer token
    lm_labels: "torch.Tensor"  # [B, C] those tokens (-100 = padding)
    n_tokens: int = 0
    sources: list[str] = field(default_factory=list)
    categories: list[str | None] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)

    def to(self, device) -> "PairBatch":
        for name in ("input_ids", "attention_mask", "position_ids", "chosen_index", "rejected_index", "margin",
                     "lm_index", "lm_labels"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        return self

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def collate_pairs(items: list[EncodedPair], pad_id: int, pad_to_multiple_of: int | None = None) -> PairBatch:
    import torch

    width = max(it.length for it in items)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    B = len(items)
    ids = torch.full((B, width), pad_id, dtype=torch.long)
    pos = torch.zeros((B, width), dtype=torch.long)
    seg = torch.full((B, width), -1, dtype=torch.long)  # 0 prefix, 1 chosen, 2 rejected, -1 pad
    cidx = torch.zeros(B, dtype=torch.long)
    ridx = torch.zeros(B, dtype=torch.long)
    cmax = max(len(it.chosen) for it in items)
    lm_index = torch.zeros((B, cmax), dtype=torch.long)
    lm_labels = torch.full((B, cmax), -100, dtype=torch.long)
    for b, it in enumerate(items):
        P, C, R = len(it.prefix), len(it.chosen), len(it.rejected)
        ids[b, :P + C + R] = torch.tensor(it.prefix + it.chosen + it.rejected, dtype=torch.long)
        pos[b, :P + C] = torch.arange(P + C)
        pos[b, P + C:P + C + R] = torch.arange(P, P + R)
        seg[b, :P] = 0
        seg[b, P:P + C] = 1
        seg[b, P + C:P + C + R] = 2
        cidx[b] = P + C - 1
        ridx[b] = P + C + R - 1
        # logits at position t predict token t+1: the chosen tokens are predicted from P-1 … P+C-2
        start = max(P - 1, 0)
        first = 0 if P > 0 else 1
        n = C - first
        lm_index[b, :n] = torch.arange(start, start + n)
        lm_labels[b, :n] = torch.tensor(it.chosen[first:], dtype=torch.long)
    t = torch.arange(width)
    causal = t[None, :, None] >= t[None, None, :]  # [1, q, k]
    sq, sk = seg[:, :, None], seg[:, None, :]
    mask = causal & (sq >= 0) & (sk >= 0) & ((sk == 0) | (sk == sq))
    mask = mask | torch.eye(width, dtype=torch.bool)[None]  # padding rows attend to themselves (no NaN)
    margin = None
    if any(it.margin is not None for it in items):
        margin = torch.tensor([it.margin or 0.0 for it in items], dtype=torch.float32)
    return PairBatch(ids, mask[:, None], pos, cidx, ridx, margin, lm_index, lm_labels,
                     n_tokens=sum(it.length for it in items), sources=[it.source for it in items],
                     categories=[it.category for it in items], indices=[it.index for it in items])


# ---------------------------------------------------------------------------------------------
# prompts for PPO
# ---------------------------------------------------------------------------------------------
def eval_prompt_keys(paths: Iterable[Path] | None = None) -> set[str]:
    """Normalised texts of the reported-suite prompts (XSTest, the bundled eval prompts, the FastChat questions).

    Default: :func:`rlhf_demo.splits.reported_prompt_keys` (the one definition of "reported"); ``paths``
    reads other XSTest-style CSV or JSONL files instead (tests).
    """
    if paths is None:
        return set(reported_prompt_keys())
    keys: set[str] = set()
    for path in map(Path, paths):
        if not path.is_file():
            continue
        if path.suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as fh:
                keys.update(normalize_text(r["prompt"]) for r in csv.DictReader(fh) if r.get("prompt"))
        else:
            for where, row in read_jsonl(path):
                for text in _prompt_texts(row):
                    keys.add(normalize_text(text))
    return keys


def _prompt_texts(row: dict) -> list[str]:
    p = row.get("prompt", row.get("turns", row.get("question")))
    if isinstance(p, str):
        return [p]
    if isinstance(p, list):
        return [m["content"] if isinstance(m, dict) else str(m) for m in p if not isinstance(m, dict) or m.get("role") == "user"]
    return []


def _prompt_item(row: dict, where: str, source: str) -> PromptItem:
    p = row.get("prompt", row.get("turns", row.get("question")))
    if p is None:
        raise DataError(f"{where}: missing field 'prompt'")
    if isinstance(p, str):
        messages = [{"role": "user", "content": _text(p, where, "prompt")}]
    elif isinstance(p, list) and p and all(isinstance(x, str) for x in p):  # FastChat "turns": first turn
        messages = [{"role": "user", "content": _text(p[0], where, "turns[0]")}]
    else:
        messages = _messages(p, where, "prompt")
        if messages[-1]["role"] != "user":
            raise DataError(f"{where}: a prompt must end with a user message")
    ident = row.get("id", row.get("question_id"))
    return PromptItem(messages, source, str(ident) if ident is not None else None,
                      row.get("category") if isinstance(row.get("category"), str) else None)


# --prompts mix: kinds of the public sets (rlhf_demo.external) -> the category PPO's validation and ptx know them by
MIX_KINDS = {"harmful": ("harmful", "harmful"), "risky": ("risky-safe", "sensitive"), "ordinary": ("ordinary", "ordinary")}
MIX_SOURCES = {"harmful": ("advbench", "harmbench", "catqa", "harmfulqa", "coconot_eval"),
               "risky-safe": ("coconot_pref",), "ordinary": ("self-instruct", "coconot_pref")}


def parse_mix(target: str) -> dict[str, int | None]:
    """``"harmful=200,risky=200,ordinary=200"`` -> counts per kind (None = as many as the smallest kind has)."""
    counts: dict[str, int | None] = {k: None for k in MIX_KINDS}
    for part in filter(None, (x.strip() for x in target.split(","))):
        kind, eq, n = part.partition("=")
        if kind not in MIX_KINDS or not eq or not n.isdigit() or int(n) <= 0:
            raise DataError(f"--prompts mix:{target}: {part!r} is not KIND=N with KIND one of "
                            f"{', '.join(MIX_KINDS)} and N a positive number")
        counts[kind] = int(n)
    return counts


def public_mix_prompts(target: str = "", seed: int = 0) -> list[PromptItem]:
    """PPO training prompts from the vendored public sets, balanced by kind: ``mix:harmful=N,risky=N,ordinary=N``.

    Only prompts whose :func:`rlhf_demo.splits.role_of` is ``train`` (never a validation, judge, detector or
    reported-suite prompt). harmful: AdvBench, HarmBench, CatQA, HarmfulQA, CoCoNot should-not-comply safety
    prompts; risky (safe requests in risky words, category ``sensitive``): CoCoNot pref safety prompts;
    ordinary: Self-Instruct and the other CoCoNot pref prompts. Within a kind the sources take turns (so the
    2,000 HarmfulQA/CatQA questions do not crowd out AdvBench and HarmBench), each in a fixed shuffled order.
    A kind without N takes as many prompts as the smallest kind offers, so the pool is balanced by default.
    """
    from rlhf_demo import external as X

    counts = parse_mix(target)
    cache: dict[str, list] = {}
    by_kind: dict[str, list[PromptItem]] = {}
    for kind, (ext_kind, category) in MIX_KINDS.items():
        queues = []
        for name in MIX_SOURCES[ext_kind]:
            if name not in cache:
                try:
                    cache[name] = X.READERS[name]()
                except X.MissingDataError as exc:
                    raise DataError(f"--prompts mix: {exc}") from exc
            recs = X.dedupe(r for r in cache[name] if r.role == "train" and r.kind == ext_kind)
            random.Random(f"{seed}:{name}:{ext_kind}").shuffle(recs)
            queues.append(recs)
        items = []
        while any(queues):
            for q in queues:
                if q:
                    r = q.pop(0)
                    items.append(PromptItem([{"role": "user", "content": r.text}], f"mix:{r.source}", r.id, category))
        by_kind[kind] = items
    smallest = min(len(v) for v in by_kind.values())
    out = []
    for kind, items in by_kind.items():
        want = counts[kind] if counts[kind] is not None else smallest
        if want > len(items):
            raise DataError(f"--prompts mix: {want} {kind} prompts asked, the public sets have {len(items)} "
                            "training-role ones")
        out.extend(items[:want])
    return out


def public_val_prompts(n: int) -> list[PromptItem]:
    """``n`` validation prompts for a ``--prompts mix`` run: role ``val`` only
    (:func:`rlhf_demo.external.validation_prompts`), the kinds taken in turn (harmful, risky, ordinary) and
    each kind in a fixed shuffled order; categories as in :func:`public_mix_prompts`."""
    from rlhf_demo import external as X

    groups = X.validation_prompts()
    queues = []
    for kind, (ext_kind, category) in MIX_KINDS.items():
        recs = list(groups.get(ext_kind, []))
        random.Random(f"val:{ext_kind}").shuffle(recs)
        queues.append([PromptItem([{"role": "user", "content": r.text}], f"mix:{r.source}", r.id, category)
                       for r in recs])
    out: list[PromptItem] = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


def load_prompts(specs: Iterable[str] = ("seed",), settings=None, on_overlap: str = "drop",
                 eval_files: Iterable[Path] | None = None) -> list[PromptItem]:
    """PPO prompts from ``seed`` (``rlhf_demo/data/ppo_prompts.jsonl``), ``arena``, ``.txt`` or ``.jsonl``.

    Prompts that are also evaluation prompts (normalised text of the last user message) are
    dropped with a warning (``on_overlap="drop"``) or refused (``"error"``). Duplicates are kept once.
    """
    if on_overlap not in ("drop", "error"):
        raise ValueError("on_overlap must be 'drop' or 'error'")
    banned = eval_prompt_keys(eval_files)
    items: list[PromptItem] = []
    seen: set[str] = set()
    dropped: list[str] = []
    for raw in specs:
        spec = parse_source(raw)
        found: list[PromptItem] = []
        if spec.kind == "seed":
            found = [_prompt_item(r, w, "seed") for w, r in read_jsonl(PPO_PROMPTS)]
        elif spec.kind == "arena":
            if settings is None:
                raise DataError("--prompts arena needs the settings of the feedback database")
            from rlhf_demo.export import export_prompts
            from rlhf_demo.store import Store

            found = [_prompt_item(r, f"arena:{i}", "arena")
                     for i, r in enumerate(export_prompts(Store.from_settings(settings)), start=1)]
        elif spec.kind == "mix":
            found = public_mix_prompts(spec.target)
        elif spec.kind == "hub":
            raise DataError("hub prompt sets are not supported; export them to JSONL first")
        else:
            path = Path(spec.target)
            if path.suffix == ".txt":
                if not path.is_file():
                    raise DataError(f"{path}: no such file")
                for lineno, line in enumerate(path.read_bytes().split(b"\n"), start=1):
                    if b"\x00" in line:
                        raise DataError(f"{path}:{lineno}: NUL byte")
                    try:
                        text = line.decode("utf-8").strip()
                    except UnicodeDecodeError as exc:
                        raise DataError(f"{path}:{lineno}: invalid UTF-8 at byte {exc.start + 1}") from exc
                    if text:
                        found.append(PromptItem([{"role": "user", "content": text}], spec.name, f"{path.name}:{lineno}"))
            else:
                found = [_prompt_item(r, w, spec.name) for w, r in read_jsonl(path)]
        if spec.limit:
            found = found[:spec.limit]
        for item in found:
            key = normalize_text(item.text)
            if key in banned:
                if on_overlap == "error":
                    raise DataError(f"prompt {item.id or item.text[:60]!r} from {spec.name} is an evaluation "
                                    "prompt; training on it would leak the evaluation")
                dropped.append(item.text)
                continue
            if key in seen:
                continue
            seen.add(key)
            items.append(item)
    if dropped:
        log.warning("dropped %d prompts that are evaluation prompts (e.g. %r)", len(dropped), dropped[0][:80])
    return items
