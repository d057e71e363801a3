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

Sources here; row formats in :mod:`training.pair_rows`; tokenising and packed batches in
:mod:`training.batching` (their names stay importable from this module).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from rlhf_demo.jsonl import text_lines
from rlhf_demo.records import PreferencePair, PromptItem
from rlhf_demo.splits import data_file, normalize_text, reported_prompt_keys  # one normalisation, one "reported" rule
from training.batching import (EncodedPair, PairBatch, batch_order, collate_pairs,  # noqa: F401 - the batching half,
                               encode_conversation, encode_pair)  # importable from here as before
from training.pair_rows import (HH_TURN, ROLES, DataError, _messages, _text, hh_to_messages,  # noqa: F401 - row
                                check_record, pair_from_row, read_jsonl)  # formats (one JSONL reader: rlhf_demo.jsonl)

log = logging.getLogger(__name__)

PACKAGE_DATA = Path(__file__).resolve().parents[1] / "rlhf_demo" / "data"
SEED_PAIRS_DIR = PACKAGE_DATA / "seed_pairs"
PPO_PROMPTS = PACKAGE_DATA / "ppo_prompts.jsonl"
EVAL_PROMPTS = PACKAGE_DATA / "eval_prompts.jsonl"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# the vendored copy (rlhf_demo/data/external) first, ../shared/data second
XSTEST_CSV = data_file("xstest/xstest_prompts.csv") or SHARED_DATA / "xstest" / "xstest_prompts.csv"


# ---------------------------------------------------------------------------------------------
# source specs (the records, PreferencePair and PromptItem, are the core's: rlhf_demo/records.py)
# ---------------------------------------------------------------------------------------------
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


def _rows_from_arena(settings) -> Iterator[tuple[str, PreferencePair]]:
    """The arena's pairs as the export's typed records (no TRL rows in between)."""
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
    for i, record in enumerate(result.records, start=1):
        yield f"arena:pair {i}", record


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
            pair = (check_record(row, where, spec.name) if isinstance(row, PreferencePair)
                    else pair_from_row(row, where, spec.name))
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
    """``"harmful=200,risky=200,ordinary=200"`` -> counts per kind (None = as many as the smallest kind has;
    0 = none of that kind, e.g. ``harmful=288,risky=0,ordinary=0`` for a harmful-only pool)."""
    counts: dict[str, int | None] = {k: None for k in MIX_KINDS}
    for part in filter(None, (x.strip() for x in target.split(","))):
        kind, eq, n = part.partition("=")
        if kind not in MIX_KINDS or not eq or not n.isdigit():
            raise DataError(f"--prompts mix:{target}: {part!r} is not KIND=N with KIND one of "
                            f"{', '.join(MIX_KINDS)} and N a whole number (0 leaves the kind out)")
        counts[kind] = int(n)
    if counts and all(n == 0 for n in counts.values()):
        raise DataError(f"--prompts mix:{target}: every kind is 0, the pool would be empty")
    return counts


def public_mix_prompts(target: str = "", seed: int = 0) -> list[PromptItem]:
    """PPO training prompts from the vendored public sets, balanced by kind: ``mix:harmful=N,risky=N,ordinary=N``.

    Only prompts whose :func:`rlhf_demo.splits.role_of` is ``train`` (never a validation, judge, detector or
    reported-suite prompt). harmful: AdvBench, HarmBench, CatQA, HarmfulQA, CoCoNot should-not-comply safety
    prompts; risky (safe requests in risky words, category ``sensitive``): CoCoNot pref safety prompts;
    ordinary: Self-Instruct and the other CoCoNot pref prompts. Within a kind the sources take turns (so the
    2,000 HarmfulQA/CatQA questions do not crowd out AdvBench and HarmBench), each in a fixed shuffled order.
    A kind without N takes as many prompts as the smallest kind offers, so the pool is balanced by default;
    ``KIND=0`` leaves a kind out.
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
            from rlhf_demo.export import export_prompt_items
            from rlhf_demo.store import Store

            found = export_prompt_items(Store.from_settings(settings))  # typed records, no rows in between
        elif spec.kind == "mix":
            found = public_mix_prompts(spec.target)
        elif spec.kind == "hub":
            raise DataError("hub prompt sets are not supported; export them to JSONL first")
        else:
            path = Path(spec.target)
            if path.suffix == ".txt":
                if not path.is_file():
                    raise DataError(f"{path}: no such file")
                found = [PromptItem([{"role": "user", "content": text}], spec.name, f"{path.name}:{lineno}")
                         for lineno, _, text in text_lines(path, DataError)]
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

