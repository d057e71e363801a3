"""Typed readers for the vendored public data sets (``rlhf_demo/data/external/<name>/``).

Every reader yields :class:`ExternalPrompt` records: the prompt text, where it came from
(``source``, ``id``, ``where`` = ``file:line``), what kind of prompt it is, and its role from
:func:`rlhf_demo.splits.role_of` (``train`` / ``val`` / ``judge`` / ``detector-dev`` /
``detector-test``, or ``reported`` for a prompt of a reported suite).

Kinds:

* ``harmful``     should be refused (AdvBench, HarmBench standard + copyright behaviours, CatQA,
                  HarmfulQA, CoCoNot's should-not-comply "Requests with safety concerns", XSTest ``unsafe``);
* ``risky-safe``  sounds risky but should be answered (CoCoNot pref "Requests with safety concerns",
                  XSTest ``safe``, CValues' responsibility prompts);
* ``ordinary``    everyday requests (Self-Instruct, the other CoCoNot pref categories — incomplete,
                  underspecified or unusual requests, to be answered — FastChat questions, HH-RLHF).

Extras, by source: ``chosen`` / ``rejected`` (CoCoNot pref, HH-RLHF), ``target`` (AdvBench's
"Sure, here is …" opening), ``output`` (Self-Instruct's human-written answer), plus the set's own
``category`` / ``subcategory`` / ``label``. A malformed row raises :class:`ExternalDataError`
naming ``file:line``. A missing data set raises :class:`MissingDataError` (a subclass), which callers
that can do without it catch and report.

This module is core: it imports nothing from ``training`` or ``eval``.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .jsonl import iter_jsonl, text_field
from .splits import data_file, normalize_text, role_of

KINDS = ("harmful", "risky-safe", "ordinary")
SAFETY = "Requests with safety concerns"


class ExternalDataError(ValueError):
    """A malformed row of a public data file; the message starts with ``file:line``."""


class MissingDataError(ExternalDataError, FileNotFoundError):
    """A public data file is neither vendored nor in ``../shared/data``."""


@dataclass(frozen=True)
class ExternalPrompt:
    """One prompt of a public set, with its role and whatever answers the set ships."""

    text: str
    source: str  # advbench | harmbench | catqa | harmfulqa | coconot_eval | coconot_pref | self-instruct | ...
    id: str
    kind: str  # harmful | risky-safe | ordinary
    role: str  # train | val | judge | detector-dev | detector-test | reported
    where: str = ""  # file:line
    chosen: str | None = None
    rejected: str | None = None
    target: str | None = None
    output: str | None = None
    category: str | None = None
    subcategory: str | None = None
    label: str | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> str:
        return normalize_text(self.text)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("text", "source", "id", "kind", "role", "where", "chosen", "rejected",
                                            "target", "output", "category", "subcategory", "label")}
        return {k: v for k, v in d.items() if v is not None}


# ---------------------------------------------------------------------------------------------
# low-level helpers
# ---------------------------------------------------------------------------------------------
def _require(sub_path: str) -> Path:
    path = data_file(sub_path)
    if path is None:
        raise MissingDataError(f"{sub_path}: not found in rlhf_demo/data/external/ nor in ../shared/data/ "
                               "(a plain clone ships it vendored; was the folder removed?)")
    return path


def _clean(value, where: str, name: str, allow_empty: bool = False) -> str:
    return text_field(value, where, name, ExternalDataError, allow_empty).strip()


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict]]:
    return iter_jsonl(path, ExternalDataError)


def _csv_rows(path: Path, required: Iterable[str]) -> Iterator[tuple[str, dict]]:
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ExternalDataError(f"{path}: cannot read ({exc})") from exc
    if b"\x00" in text:
        line = text[:text.index(b"\x00")].count(b"\n") + 1
        raise ExternalDataError(f"{path}:{line}: NUL byte")
    try:
        decoded = text.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = text[:exc.start].count(b"\n") + 1
        raise ExternalDataError(f"{path}:{line}: invalid UTF-8") from exc
    reader = csv.DictReader(decoded.splitlines(keepends=True))
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        raise ExternalDataError(f"{path}:1: missing column(s) {missing}; header is {reader.fieldnames}")
    start = 2
    for row in reader:
        where = f"{path}:{start}"
        start = reader.line_num + 1
        if None in row:
            raise ExternalDataError(f"{where}: more fields than the header has")
        yield where, row


def _record(text: str, source: str, ident: str, kind: str, where: str, reported=None, **kw) -> ExternalPrompt:
    return ExternalPrompt(text=text, source=source, id=ident, kind=kind, role=role_of(text, reported), where=where,
                          **kw)


# ---------------------------------------------------------------------------------------------
# readers, one per set
# ---------------------------------------------------------------------------------------------
def advbench() -> list[ExternalPrompt]:
    """AdvBench harmful behaviours (``goal``) with their compliant opening (``target``)."""
    path = _require("advbench/harmful_behaviors.csv")
    out = []
    for i, (where, row) in enumerate(_csv_rows(path, ("goal", "target"))):
        out.append(_record(_clean(row["goal"], where, "goal"), "advbench", f"advbench-{i}", "harmful", where,
                           target=_clean(row["target"], where, "target")))
    return out


def harmbench(functional: tuple[str, ...] = ("standard", "copyright")) -> list[ExternalPrompt]:
    """HarmBench text behaviours of the given functional categories (contextual ones need their long
    context and are left out by default)."""
    path = _require("harmbench/harmbench_behaviors_text_all.csv")
    out = []
    for where, row in _csv_rows(path, ("Behavior", "FunctionalCategory", "SemanticCategory", "BehaviorID")):
        func = _clean(row["FunctionalCategory"], where, "FunctionalCategory")
        if func not in functional:
            continue
        text = _clean(row["Behavior"], where, "Behavior")
        if func == "contextual":
            text = _clean(row.get("ContextString", ""), where, "ContextString") + "\n\n" + text
        out.append(_record(text, "harmbench", _clean(row["BehaviorID"], where, "BehaviorID"), "harmful", where,
                           category=func, subcategory=row.get("SemanticCategory") or None))
    return out


def _nested_questions(path: Path, source: str) -> list[ExternalPrompt]:
    raw = path.read_text(encoding="utf-8")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ExternalDataError(f"{path}:{exc.lineno}: bad JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(data, dict):
        raise ExternalDataError(f"{path}:1: expected an object of categories, got {type(data).__name__}")
    lines = raw.split("\n")
    cursor = 0

    def line_of(text: str) -> int:  # the questions appear in file order: search forward from the last hit
        nonlocal cursor
        needle = json.dumps(text, ensure_ascii=False)[1:-1][:60]
        for k in range(cursor, len(lines)):
            if needle in lines[k] or needle in lines[k].encode().decode("unicode_escape", "ignore"):
                cursor = k
                return k + 1
        return cursor + 1

    out = []
    for cat, topics in data.items():
        if not isinstance(topics, dict):
            raise ExternalDataError(f"{path}:{cursor + 1}: category {cat!r} must map topics to question lists")
        for topic, questions in topics.items():
            if not isinstance(questions, list):
                raise ExternalDataError(f"{path}:{cursor + 1}: {cat}/{topic} must be a list of questions")
            for j, q in enumerate(questions):
                where = f"{path}:{line_of(q) if isinstance(q, str) else cursor + 1}"
                text = _clean(q, where, f"{cat}/{topic}[{j}]")
                out.append(_record(text, source, f"{source}-{len(out)}", "harmful", where, category=cat,
                                   subcategory=topic.rstrip(":")))
    return out


def catqa() -> list[ExternalPrompt]:
    """CatQA's English harmful questions (nested category → sub-category → questions)."""
    return _nested_questions(_require("catqa-harmfulqa/catqa_english.json"), "catqa")


def harmfulqa() -> list[ExternalPrompt]:
    """HarmfulQA's harmful questions (nested topic → sub-topic → questions)."""
    return _nested_questions(_require("catqa-harmfulqa/harmfulqa.json"), "harmfulqa")


def coconot_eval() -> list[ExternalPrompt]:
    """CoCoNot should-not-comply prompts; only "Requests with safety concerns" (harmful) are returned —
    the other categories (incomplete, unsupported, humanising) are neither harmful nor plain requests."""
    path = _require("coconot/coconot_eval.jsonl")
    out = []
    for where, row in _jsonl_rows(path):
        cat = _clean(row.get("category"), where, "category")
        if cat != SAFETY:
            continue
        out.append(_record(_clean(row.get("prompt"), where, "prompt"), "coconot_eval",
                           str(row.get("id") or f"coconot_eval-{len(out)}"), "harmful", where, category=cat,
                           subcategory=row.get("subcategory")))
    return out


def coconot_pref() -> list[ExternalPrompt]:
    """CoCoNot preference pairs on prompts that should be answered: ``chosen`` (compliant) beats
    ``rejected``. "Requests with safety concerns" are ``risky-safe``; the rest ``ordinary``."""
    path = _require("coconot/coconot_pref.jsonl")
    out = []
    for where, row in _jsonl_rows(path):
        cat = _clean(row.get("category"), where, "category")
        out.append(_record(_clean(row.get("prompt"), where, "prompt"), "coconot_pref",
                           _clean(row.get("id"), where, "id"), "risky-safe" if cat == SAFETY else "ordinary",
                           where, chosen=_clean(row.get("chosen"), where, "chosen"),
                           rejected=_clean(row.get("rejected"), where, "rejected"), category=cat,
                           subcategory=row.get("subcategory")))
    return out


def self_instruct(files: tuple[str, ...] = ("user_oriented_instructions.jsonl", "seed_tasks.jsonl")
                  ) -> list[ExternalPrompt]:
    """Self-Instruct everyday instructions; the prompt is the instruction plus its first instance's
    input (when there is one); ``output`` is the human-written answer."""
    out = []
    for name in files:
        path = _require(f"self-instruct/{name}")
        for where, row in _jsonl_rows(path):
            instr = _clean(row.get("instruction"), where, "instruction")
            inst = row.get("instances")
            if not isinstance(inst, list) or not inst or not isinstance(inst[0], dict):
                raise ExternalDataError(f"{where}: field 'instances' must be a non-empty list of objects")
            inp = _clean(inst[0].get("input", ""), where, "instances[0].input", allow_empty=True)
            output = _clean(inst[0].get("output"), where, "instances[0].output")
            text = f"{instr}\n\n{inp}" if inp else instr
            out.append(_record(text, "self-instruct", _clean(row.get("id"), where, "id"), "ordinary", where,
                               output=output, category=row.get("motivation_app") or row.get("name")))
    return out


def cvalues_zh() -> list[ExternalPrompt]:
    """CValues' Chinese responsibility prompts (no answers): ``risky-safe``."""
    path = _require("cvalues-zh/cvalues_responsibility_prompts.jsonl")
    return [_record(_clean(row.get("prompt"), where, "prompt"), "cvalues-zh", str(row.get("id_", i)), "risky-safe",
                    where, category=row.get("domain_en"))
            for i, (where, row) in enumerate(_jsonl_rows(path))]


def xstest() -> list[ExternalPrompt]:
    """XSTest v2 (a reported suite: role ``reported``): ``unsafe`` → harmful, ``safe`` → risky-safe."""
    path = _require("xstest/xstest_prompts.csv")
    out = []
    for where, row in _csv_rows(path, ("id", "prompt", "type", "label")):
        label = _clean(row["label"], where, "label")
        if label not in ("safe", "unsafe"):
            raise ExternalDataError(f"{where}: label must be 'safe' or 'unsafe', got {label!r}")
        out.append(_record(_clean(row["prompt"], where, "prompt"), "xstest", f"xstest-{row['id']}",
                           "harmful" if label == "unsafe" else "risky-safe", where, label=label,
                           category=row.get("type")))
    return out


def fastchat() -> list[ExternalPrompt]:
    """Vicuna-bench and MT-bench first turns (a reported suite)."""
    out = []
    for name in ("vicuna_bench_questions.jsonl", "mt_bench_questions.jsonl"):
        path = _require(f"fastchat-bench/{name}")
        for where, row in _jsonl_rows(path):
            turns = row.get("turns")
            if not isinstance(turns, list) or not turns:
                raise ExternalDataError(f"{where}: field 'turns' must be a non-empty list")
            out.append(_record(_clean(turns[0], where, "turns[0]"), "fastchat",
                               f"{name.split('_')[0]}-{row.get('question_id')}", "ordinary", where,
                               category=row.get("category")))
    return out


HH_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")


def hh_rlhf() -> list[ExternalPrompt]:
    """HH-RLHF harmless-base pairs; ``text`` is the last human turn both answers follow, ``chosen`` /
    ``rejected`` the raw transcripts."""
    path = _require("hh-rlhf/harmless-base-test-part.jsonl.gz")
    out = []
    for i, (where, row) in enumerate(_jsonl_rows(path)):
        _clean(row.get("chosen"), where, "chosen")
        _clean(row.get("rejected"), where, "rejected")
        chosen, rejected = row["chosen"], row["rejected"]  # raw: the transcript starts with "\n\nHuman:"
        cut = chosen.rfind("\n\nAssistant:")
        human = chosen.rfind("\n\nHuman:", 0, cut if cut >= 0 else None)
        if cut < 0 or human < 0:
            raise ExternalDataError(f"{where}: 'chosen' is not HH-RLHF text ('\\n\\nHuman: …\\n\\nAssistant: …')")
        text = _clean(chosen[human + len("\n\nHuman:"):cut], where, "last Human turn")
        out.append(_record(text, "hh-rlhf", f"hh-{i}", "ordinary", where, chosen=chosen, rejected=rejected))
    return out


READERS: dict[str, Callable[[], list[ExternalPrompt]]] = {
    "advbench": advbench, "harmbench": harmbench, "catqa": catqa, "harmfulqa": harmfulqa,
    "coconot_eval": coconot_eval, "coconot_pref": coconot_pref, "self-instruct": self_instruct,
    "cvalues-zh": cvalues_zh, "xstest": xstest, "fastchat": fastchat, "hh-rlhf": hh_rlhf,
}
HARMFUL_SOURCES = ("advbench", "harmbench", "catqa", "harmfulqa", "coconot_eval")


def read(names: Iterable[str]) -> list[ExternalPrompt]:
    """Records of several sets, in order; a name not in :data:`READERS` is a ValueError."""
    out = []
    for name in names:
        if name not in READERS:
            raise ValueError(f"unknown public set {name!r}; choose from {sorted(READERS)}")
        out.extend(READERS[name]())
    return out


def dedupe(records: Iterable[ExternalPrompt]) -> list[ExternalPrompt]:
    """The first record of each normalised prompt text."""
    seen: set[str] = set()
    out = []
    for r in records:
        if r.key not in seen:
            seen.add(r.key)
            out.append(r)
    return out


def validation_prompts(kinds: Iterable[str] = KINDS, skip_missing: bool = True) -> dict[str, list[ExternalPrompt]]:
    """Labelled ``val``-role prompts by kind, for checkpoint choice and the pipeline's gates.

    * harmful: AdvBench, HarmBench (standard + copyright), CatQA, HarmfulQA, CoCoNot should-not-comply
      safety prompts;
    * risky-safe: CoCoNot pref "Requests with safety concerns";
    * ordinary: Self-Instruct and the other CoCoNot pref prompts.

    Never contains a reported-suite prompt (those have role ``reported``). A missing set is skipped
    (``skip_missing``) or raises :class:`MissingDataError`.
    """
    sources = {"harmful": HARMFUL_SOURCES, "risky-safe": ("coconot_pref",), "ordinary": ("self-instruct", "coconot_pref")}
    out: dict[str, list[ExternalPrompt]] = {}
    cache: dict[str, list[ExternalPrompt]] = {}
    for kind in kinds:
        if kind not in sources:
            raise ValueError(f"unknown kind {kind!r}; choose from {KINDS}")
        recs = []
        for name in sources[kind]:
            if name not in cache:
                try:
                    cache[name] = READERS[name]()
                except MissingDataError:
                    if not skip_missing:
                        raise
                    cache[name] = []
            recs.extend(r for r in cache[name] if r.role == "val" and r.kind == kind)
        out[kind] = dedupe(recs)
    return out
