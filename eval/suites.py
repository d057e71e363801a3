"""Prompt suites for ``python -m eval``.

Every prompt gets one of three categories, which decide what is measured on it:

* ``unsafe``  — should be refused: harmful-compliance rate (harmlessness);
* ``safe``    — sounds risky but should be answered: over-refusal rate;
* ``helpful`` — ordinary requests: pairwise win rate against the baseline (helpfulness).

A suite spec (``--suite``, repeatable) is a built-in name or a file path, optionally prefixed with a
category that overrides the file's own (``unsafe:my_red_team.txt``):

========== ===================================================================================
project    ``rlhf_demo/data/eval_prompts.jsonl`` — the project's own evaluation prompts
           (``harmful`` → unsafe, ``sensitive`` → safe, ``ordinary`` → helpful); disjoint from
           every training prompt
xstest     ``xstest/xstest_prompts.csv`` — XSTest v2, ``label`` unsafe / safe
vicuna     ``fastchat-bench/vicuna_bench_questions.jsonl`` (first turn; helpful)
mt-bench   ``fastchat-bench/mt_bench_questions.jsonl`` (first turn; helpful)
hh-harmless ``hh-rlhf/harmless-base-test-part.jsonl.gz`` (first human turn; unsafe)
========== ===================================================================================

File formats, recognised by extension and row shape: XSTest-format ``.csv`` (``prompt`` and
``label`` columns), HH-RLHF ``.jsonl[.gz]`` (``chosen`` text with ``\\n\\nHuman:`` turns — the
first human turn is the prompt), FastChat question ``.jsonl`` (``turns`` — the first turn), any
``.jsonl`` with a ``prompt`` field (a string or a list of chat messages) and an optional
``category``, and ``.txt`` (one prompt per line; blank lines and ``#`` comments skipped). A
malformed row raises :class:`SuiteError` naming ``file:line``. The public built-ins are read from
their vendored copies in ``rlhf_demo/data/external/`` (``../shared/data`` second) and are skipped with a
message when neither exists; an explicit path that
does not exist is an error.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from rlhf_demo.jsonl import decode_line, jsonl_rows, read_bytes

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RLHF_ARENA_SHARED_DATA", ROOT.parent / "shared" / "data"))
CATEGORIES = ("unsafe", "safe", "helpful")
CATEGORY_ALIASES = {
    "unsafe": "unsafe", "harmful": "unsafe", "harmless": "unsafe", "red-team": "unsafe", "redteam": "unsafe",
    "safe": "safe", "sensitive": "safe", "borderline": "safe",
    "helpful": "helpful", "ordinary": "helpful", "benign": "helpful", "general": "helpful",
}


def _public(sub_path: str) -> Path:
    """A public data file: the vendored copy (rlhf_demo/data/external) first, ../shared/data second."""
    from rlhf_demo.splits import data_file

    return data_file(sub_path) or SHARED_DATA / sub_path


BUILTIN = {
    "project": (ROOT / "rlhf_demo" / "data" / "eval_prompts.jsonl", None, False),
    "xstest": (_public("xstest/xstest_prompts.csv"), None, True),
    "vicuna": (_public("fastchat-bench/vicuna_bench_questions.jsonl"), "helpful", True),
    "mt-bench": (_public("fastchat-bench/mt_bench_questions.jsonl"), "helpful", True),
    "hh-harmless": (_public("hh-rlhf/harmless-base-test-part.jsonl.gz"), "unsafe", True),
}
DEFAULT_SUITES = ("project", "xstest", "vicuna")


class SuiteError(ValueError):
    """A suite that cannot be read: unknown name, missing file, or a malformed row (file:line)."""


@dataclass
class EvalPrompt:
    id: str  # "<suite>/<row id>", unique within a run
    suite: str
    category: str  # unsafe | safe | helpful
    messages: list[dict]  # the conversation to answer (one user turn for every built-in suite)
    source: str  # "file:line"
    meta: dict = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The text of the last user turn."""
        return next(m["content"] for m in reversed(self.messages) if m.get("role") == "user")


@dataclass
class Suite:
    name: str
    path: Path
    format: str
    prompts: list[EvalPrompt]
    sha256: str
    total: int  # rows before --limit
    limit: int | None = None

    def counts(self) -> dict[str, int]:
        out = {c: 0 for c in CATEGORIES}
        for p in self.prompts:
            out[p.category] += 1
        return {k: v for k, v in out.items() if v}

    def describe(self) -> dict:
        return {"name": self.name, "path": str(self.path), "format": self.format, "sha256": self.sha256,
                "rows": self.total, "limit": self.limit, "counts": self.counts()}


# ---------------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------------
def normalize_category(value, where: str) -> str:
    cat = CATEGORY_ALIASES.get(str(value).strip().lower())
    if cat is None:
        raise SuiteError(f"{where}: unknown category {value!r}; use one of "
                         f"{', '.join(sorted(CATEGORY_ALIASES))}")
    return cat


def _read_text(path: Path) -> str:
    """The file's text; a NUL byte or invalid UTF-8 is an error naming ``file:line``."""
    raw = read_bytes(path, SuiteError)
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if b"\\u0000" in line:  # an escaped NUL in a JSON/CSV row: refused as well
            raise SuiteError(f"{path}:{lineno}: NUL byte (escaped \\u0000)")
        decode_line(line, f"{path}:{lineno}", SuiteError)
    return raw.decode("utf-8")


def hh_first_human_turn(text: str) -> str | None:
    """The first ``Human:`` turn of an HH-RLHF transcript ("\\n\\nHuman: …\\n\\nAssistant: …")."""
    if text.lstrip().startswith("Human:"):
        text = "\n\n" + text.lstrip()
    m = re.search(r"\n\nHuman:\s*(.*?)(?=\n\nAssistant:|\n\nHuman:|$)", text, flags=re.S)
    return m.group(1).strip() if m and m.group(1).strip() else None


def _messages_from(value, where: str) -> list[dict]:
    if isinstance(value, str):
        if not value.strip():
            raise SuiteError(f"{where}: empty prompt")
        return [{"role": "user", "content": value.strip()}]
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        msgs = []
        for m in value:
            role, content = m.get("role"), m.get("content")
            if role not in ("system", "user", "assistant") or not isinstance(content, str):
                raise SuiteError(f"{where}: each message needs a role (system/user/assistant) and string content")
            msgs.append({"role": role, "content": content})
        if msgs[-1]["role"] != "user" or not msgs[-1]["content"].strip():
            raise SuiteError(f"{where}: the conversation must end with a non-empty user message")
        return msgs
    raise SuiteError(f"{where}: 'prompt' must be a string or a list of chat messages")


def read_jsonl(path: Path, default_category: str | None) -> tuple[str, list[tuple[str, str, list[dict], str, dict]]]:
    """Rows as (row id, category, messages, file:line, meta); the format is detected per file."""
    rows, fmt = [], None
    for lineno, where, obj in jsonl_rows(_read_text(path).encode("utf-8"), path, SuiteError):
        meta = {}
        if "turns" in obj:
            kind = "fastchat"
            turns = obj["turns"]
            if not isinstance(turns, list) or not turns or not isinstance(turns[0], str) or not turns[0].strip():
                raise SuiteError(f"{where}: 'turns' must be a non-empty list of strings")
            messages = [{"role": "user", "content": turns[0].strip()}]
            row_id = str(obj.get("question_id", lineno))
            meta["fastchat_category"] = obj.get("category")
            category = default_category or "helpful"
        elif "prompt" in obj:
            kind = "prompt-jsonl"
            messages = _messages_from(obj["prompt"], where)
            row_id = str(obj.get("id", lineno))
            category = default_category or (normalize_category(obj["category"], where) if obj.get("category")
                                            else (normalize_category(obj["label"], where) if obj.get("label") else "helpful"))
        elif "chosen" in obj:
            kind = "hh-rlhf"
            if not isinstance(obj["chosen"], str):
                raise SuiteError(f"{where}: 'chosen' must be an HH-RLHF transcript string")
            first = hh_first_human_turn(obj["chosen"])
            if first is None:
                raise SuiteError(f"{where}: no '\\n\\nHuman:' turn in 'chosen'")
            messages = [{"role": "user", "content": first}]
            row_id = str(lineno)
            category = default_category or ("unsafe" if "harmless" in path.name.lower() else "helpful")
        else:
            raise SuiteError(f"{where}: a row needs 'prompt' (string or messages), 'turns' (FastChat) "
                             "or 'chosen' (HH-RLHF)")
        if fmt is None:
            fmt = kind
        elif fmt != kind:
            raise SuiteError(f"{where}: {kind} row in a {fmt} file")
        rows.append((row_id, category, messages, where, meta))
    return fmt or "jsonl", rows


def read_csv(path: Path, default_category: str | None):
    text = _read_text(path)
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "prompt" not in reader.fieldnames:
        raise SuiteError(f"{path}:1: an XSTest-format CSV needs a 'prompt' column (and 'label': safe/unsafe)")
    rows = []
    for i, row in enumerate(reader):
        where = f"{path}:{reader.line_num}"
        prompt = (row.get("prompt") or "").strip()
        if not prompt:
            raise SuiteError(f"{where}: empty prompt")
        if default_category:
            category = default_category
        elif row.get("label"):
            category = normalize_category(row["label"], where)
        else:
            raise SuiteError(f"{where}: no 'label' (safe/unsafe) and no category prefix on the suite")
        meta = {k: row[k] for k in ("type", "focus", "note") if row.get(k)}
        rows.append((str(row.get("id") or i + 1), category, [{"role": "user", "content": prompt}], where, meta))
    return "xstest-csv", rows


def read_txt(path: Path, default_category: str | None):
    rows = []
    for lineno, line in enumerate(io.StringIO(_read_text(path)), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        rows.append((str(lineno), default_category or "helpful", [{"role": "user", "content": text}],
                     f"{path}:{lineno}", {}))
    return "txt", rows


def subsample(items: list, n: int | None) -> list:
    """``n`` evenly spaced items (deterministic; keeps the variety of an ordered file)."""
    if n is None or n >= len(items):
        return list(items)
    if n <= 0:
        return []
    return [items[int(i * len(items) / n)] for i in range(n)]


def parse_spec(spec: str) -> tuple[str | None, str]:
    """``unsafe:path`` → ("unsafe", "path"); ``xstest`` → (None, "xstest")."""
    head, sep, tail = spec.partition(":")
    if sep and head.strip().lower() in CATEGORY_ALIASES and tail:
        return CATEGORY_ALIASES[head.strip().lower()], tail
    return None, spec


def load_suite(spec: str, limit: int | None = None) -> Suite | None:
    """Load one suite. Returns None (after a message) for a built-in whose shared data is absent.

    ``limit`` keeps at most that many prompts per category (evenly spaced through the file).
    """
    category, target = parse_spec(spec)
    if target in BUILTIN:
        path, builtin_category, optional = BUILTIN[target]
        name = target
        category = category or builtin_category
        if not path.exists():
            if optional:
                print(f"[eval] suite {name!r} skipped: {path} is absent (../shared/data is not part of a clone)",
                      flush=True)
                return None
            raise SuiteError(f"suite {name!r}: {path} is missing")
    else:
        path = Path(target).expanduser()
        if not path.exists():
            known = ", ".join(BUILTIN)
            raise SuiteError(f"suite {spec!r}: no such file, and not a built-in suite ({known})")
        name = re.sub(r"[^a-z0-9_-]+", "-", path.name.lower().split(".")[0]).strip("-") or "suite"
    suffixes = "".join(path.suffixes[-2:]).lower()
    if suffixes.endswith(".csv"):
        fmt, rows = read_csv(path, category)
    elif suffixes.endswith(".jsonl") or suffixes.endswith(".jsonl.gz") or suffixes.endswith(".json"):
        fmt, rows = read_jsonl(path, category)
    elif suffixes.endswith(".txt"):
        fmt, rows = read_txt(path, category)
    else:
        raise SuiteError(f"{path}: unknown suite format; use .csv (XSTest), .jsonl[.gz] or .txt")
    # one prompt once (HH-RLHF repeats first turns across pairs)
    seen, unique = set(), []
    for row in rows:
        key = (row[1], json.dumps(row[2], sort_keys=True))
        if key not in seen:
            seen.add(key)
            unique.append(row)
    prompts = []
    for cat in CATEGORIES:
        chosen = subsample([r for r in unique if r[1] == cat], limit)
        prompts += [EvalPrompt(f"{name}/{rid}", name, cat, msgs, where, meta) for rid, _, msgs, where, meta in chosen]
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise SuiteError(f"{path}: duplicate row id {dup.split('/', 1)[1]!r}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Suite(name, path, fmt, prompts, digest, total=len(unique), limit=limit)


def parse_limits(values: list[str] | None) -> tuple[int | None, dict[str, int]]:
    """``--limit 20`` (every suite) and ``--limit xstest=50`` (one suite) → (default, per suite)."""
    default, per = None, {}
    for v in values or []:
        name, sep, num = v.rpartition("=")
        try:
            n = int(num)
        except ValueError:
            raise SuiteError(f"--limit {v!r}: use N or SUITE=N") from None
        if n < 0:
            raise SuiteError(f"--limit {v!r}: must be >= 0")
        if sep:
            per[name] = n
        else:
            default = n
    return default, per


def load_suites(specs: list[str] | None, limits: list[str] | None = None) -> list[Suite]:
    """Load every suite spec (the defaults when none), applying ``--limit`` values."""
    default, per = parse_limits(limits)
    suites, names = [], set()
    for spec in specs or list(DEFAULT_SUITES):
        _, target = parse_spec(spec)
        key = target if target in BUILTIN else re.sub(r"[^a-z0-9_-]+", "-", Path(target).name.lower().split(".")[0]).strip("-")
        suite = load_suite(spec, per.get(key, per.get(spec, default)))
        if suite is None:
            continue
        if suite.name in names:
            raise SuiteError(f"suite {suite.name!r} given twice")
        names.add(suite.name)
        suites.append(suite)
    if not suites:
        raise SuiteError("no prompt suites to evaluate (every suite was skipped or empty)")
    return suites
