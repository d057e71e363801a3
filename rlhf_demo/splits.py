"""Which prompt may be used for what: training, validation, the judge, the refusal detector, the test.

The project measures honestly only if the data that *chooses* (recipes, checkpoints, thresholds,
detector rules) never meets the data that is *reported*. This module is the one place that decides:

* **reported suites** — XSTest, the project's eval prompts (``rlhf_demo/data/eval_prompts.jsonl``)
  and the FastChat questions (Vicuna-bench, MT-bench). They run once, at the end, for the report.
  :func:`reported_prompt_keys` reads them (vendored copies under ``rlhf_demo/data/external`` first,
  ``../shared/data`` second) and :func:`check_not_reported` stops any run that would train or
  validate on one of them.
* **every other external prompt** gets one role from a seeded hash of its normalised text
  (:func:`role_of`), so the assignment does not depend on file order or on which other rows exist:

  ========================  ======  ====================================================================
  role                      share   used for
  ========================  ======  ====================================================================
  ``train``                 60 %    reward-model pairs, PPO prompt pools
  ``val``                   15 %    PPO validation, checkpoint and recipe choice, pipeline gates
  ``judge``                 10 %    the independent helpfulness judge's training pairs
  ``detector-dev``          7.5 %   writing / training the refusal judge
  ``detector-test``         7.5 %   the refusal judge's frozen test set (never read while tuning it)
  ========================  ======  ====================================================================

A prompt that is also a reported-suite prompt has the role ``reported`` whatever its hash.
"""

from __future__ import annotations

import csv
import hashlib
import os
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from .jsonl import iter_jsonl

PACKAGE_DATA = Path(__file__).resolve().parent / "data"
EXTERNAL = PACKAGE_DATA / "external"
SHARED_DATA = Path(os.environ.get("RLHF_ARENA_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
EVAL_PROMPTS = PACKAGE_DATA / "eval_prompts.jsonl"

ROLES = ("train", "val", "judge", "detector-dev", "detector-test")
SHARES = (0.60, 0.15, 0.10, 0.075, 0.075)
SPLIT_SEED = "rlhf-arena-splits-v1"

# the reported suites: (sub-path under external/ or shared/data, kind)
REPORTED_FILES = (
    ("xstest/xstest_prompts.csv", "csv"),
    ("fastchat-bench/vicuna_bench_questions.jsonl", "fastchat"),
    ("fastchat-bench/mt_bench_questions.jsonl", "fastchat"),
)


class LeakError(ValueError):
    """A prompt meant for training or selection is a prompt of a reported suite."""


def normalize_text(text: str) -> str:
    """Case-, width- and whitespace-insensitive form of a text (for prompt keys and overlap checks)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    return " ".join(text.split()).strip(" .!?")


def hash_unit(text: str, seed: str = SPLIT_SEED) -> float:
    """A number in [0, 1) fixed by ``text`` and ``seed`` alone."""
    digest = hashlib.sha256(f"{seed}\x00{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def data_file(sub_path: str) -> Path | None:
    """A public data file: the vendored copy in ``rlhf_demo/data/external`` first, then ``../shared/data``."""
    for root in (EXTERNAL, SHARED_DATA):
        path = root / sub_path
        if path.is_file():
            return path
    return None


def _reported_texts(path: Path, kind: str) -> Iterable[str]:
    if kind == "csv":
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if row.get("prompt"):
                    yield row["prompt"]
        return
    for _, row in iter_jsonl(path):  # the one JSONL reader: a bad line is an error naming file:line
        if kind == "fastchat":
            yield from (t for t in row.get("turns", []) if isinstance(t, str))
        else:
            p = row.get("prompt")
            if isinstance(p, str):
                yield p
            elif isinstance(p, list):
                yield from (m["content"] for m in p if isinstance(m, dict) and m.get("role") == "user")


@lru_cache(maxsize=1)
def _reported_keys_cached(extra: tuple[str, ...]) -> tuple[frozenset[str], tuple[str, ...]]:
    keys: set[str] = set()
    found: list[str] = []
    sources = [(EVAL_PROMPTS, "jsonl")] + [(data_file(sub), kind) for sub, kind in REPORTED_FILES]
    sources += [(Path(p), "csv" if p.endswith(".csv") else "jsonl") for p in extra]
    for path, kind in sources:
        if path is None or not Path(path).is_file():
            continue
        found.append(str(path))
        keys.update(normalize_text(t) for t in _reported_texts(Path(path), kind))
    return frozenset(keys), tuple(found)


def reported_prompt_keys(extra_files: Iterable[str | Path] = ()) -> frozenset[str]:
    """Normalised texts of every reported-suite prompt (plus ``extra_files``: CSV or JSONL with ``prompt``)."""
    return _reported_keys_cached(tuple(str(p) for p in extra_files))[0]


def role_of(text: str, reported: frozenset[str] | None = None) -> str:
    """The role of one prompt: ``reported`` for a reported-suite prompt, else one of :data:`ROLES` by hash."""
    key = normalize_text(text)
    if key in (reported_prompt_keys() if reported is None else reported):
        return "reported"
    u, edge = hash_unit(key), 0.0
    for role, share in zip(ROLES, SHARES):
        edge += share
        if u < edge:
            return role
    return ROLES[-1]


def check_not_reported(texts: Iterable[str], what: str) -> None:
    """Raise :class:`LeakError` when any of ``texts`` is a reported-suite prompt.

    ``what`` names the set being checked (``"PPO validation prompts"``) for the message.
    """
    reported = reported_prompt_keys()
    hits = [t for t in texts if normalize_text(t) in reported]
    if hits:
        raise LeakError(f"{len(hits)} of the {what} are prompts of a reported suite (XSTest, the project's eval "
                        f"prompts or the FastChat questions), e.g. {hits[0][:80]!r}; reported suites are run once "
                        "for the report and never used to train or choose")
