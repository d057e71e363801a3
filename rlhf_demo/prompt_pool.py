"""Prompt suggestions for the arena: a pool mixing harmful, risky-but-safe and ordinary prompts, per UI language.

A newcomer facing an empty box gets clickable example prompts and a "Suggest a prompt" button; both draw from
a :class:`PromptPool`. Suggestions are stratified: a category is drawn uniformly first, then a prompt within it,
so a small harmful or risky-safe set is not drowned by a large ordinary one.

The project's own pool (the default) takes **train-role prompts only** (:func:`rlhf_demo.splits.role_of`); it
never offers a reported-suite prompt (XSTest, the project's eval prompts, the FastChat questions), since votes
on suggested prompts become training data:

* English — AdvBench (harmful), CoCoNot pref (its "Requests with safety concerns" are risky-safe, the rest
  ordinary), Self-Instruct (ordinary), read through :mod:`rlhf_demo.external`;
* Chinese — CValues' responsibility prompts (risky-safe; Apache-2.0, see ``rlhf_demo/data/DATA_CARD.md``) and
  ``rlhf_demo/data/prompt_pool_zh.jsonl`` (short harmful and ordinary prompts written for this project).

An admin's own pool (``--prompt-pool FILE``): JSONL, one object a line, ``{"prompt": "...", "category":
"harmful" | "risky-safe" | "ordinary", "lang": "en" | "zh"}`` (``lang`` defaults to ``en``, ``id`` optional).
A broken row is refused with ``file:line`` and what is wrong (:mod:`rlhf_demo.jsonl`); so is a prompt of a
reported suite. This module is core: it imports nothing from ``training`` or ``eval``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from .jsonl import iter_jsonl, text_field
from .splits import normalize_text, reported_prompt_keys, role_of

CATEGORIES = ("harmful", "risky-safe", "ordinary")
LANGS = ("en", "zh")
MAX_SUGGESTION_CHARS = 400  # long multi-paragraph tasks make poor suggestions
ZH_FILE = Path(__file__).resolve().parent / "data" / "prompt_pool_zh.jsonl"


class PromptPoolError(ValueError):
    """A prompt pool file that cannot be used; the message starts with ``file:line`` where there is one."""


@dataclass(frozen=True)
class PoolPrompt:
    text: str
    category: str  # harmful | risky-safe | ordinary
    lang: str = "en"
    source: str = ""  # pool name, e.g. advbench, cvalues-zh, or the admin's file name
    id: str = ""

    @property
    def ref(self) -> str:
        """Where the prompt came from, for the store: ``source:id``."""
        return f"{self.source}:{self.id}"

    def meta(self) -> dict:
        return {"category": self.category, "lang": self.lang, "ref": self.ref}


class PromptPool:
    """Prompts per language and category; :meth:`suggest` draws one, :meth:`examples` gives a fixed few."""

    def __init__(self, prompts: list[PoolPrompt], name: str = "project"):
        self.name = name
        self.by_lang: dict[str, dict[str, list[PoolPrompt]]] = {}
        seen = set()
        for p in prompts:
            key = (p.lang, normalize_text(p.text))
            if key in seen:
                continue
            seen.add(key)
            self.by_lang.setdefault(p.lang, {}).setdefault(p.category, []).append(p)
        self._by_text = {(p.lang, p.text): p for cats in self.by_lang.values() for ps in cats.values() for p in ps}

    def __len__(self) -> int:
        return len(self._by_text)

    def _lang(self, lang: str) -> str:
        lang = "zh" if str(lang).startswith("zh") else "en"
        if lang not in self.by_lang:  # a pool with one language serves both UIs
            lang = next(iter(self.by_lang), lang)
        return lang

    def counts(self) -> dict[str, dict[str, int]]:
        return {lang: {c: len(ps) for c, ps in cats.items()} for lang, cats in self.by_lang.items()}

    def suggest(self, lang: str, rng: random.Random) -> PoolPrompt | None:
        """A category uniformly among those the language has, then a prompt uniformly within it."""
        cats = self.by_lang.get(self._lang(lang), {})
        names = [c for c in CATEGORIES if cats.get(c)]
        if not names:
            return None
        return rng.choice(cats[rng.choice(names)])

    def examples(self, lang: str, n: int = 3, seed: int = 0, max_chars: int = 90) -> list[PoolPrompt]:
        """``n`` short prompts for the clickable examples: one per category in turn, fixed by ``seed``."""
        cats = self.by_lang.get(self._lang(lang), {})
        rng = random.Random(seed)
        pools = {c: [p for p in cats.get(c, []) if len(p.text) <= max_chars and "\n" not in p.text]
                 for c in CATEGORIES}
        order = [c for c in ("ordinary", "risky-safe", "harmful") if pools[c]]
        out: list[PoolPrompt] = []
        for i in range(n):
            if not order:
                break
            c = order[i % len(order)]
            left = [p for p in pools[c] if p not in out]
            if left:
                out.append(rng.choice(left))
        return out

    def lookup(self, lang: str, text: str) -> PoolPrompt | None:
        """The pool prompt with exactly this text (after the arena's stripping), if any."""
        return self._by_text.get((self._lang(lang), text.strip()))


# -- the project's pool ---------------------------------------------------------------------------------------
def _train_only(prompts: list[PoolPrompt]) -> list[PoolPrompt]:
    reported = reported_prompt_keys()
    return [p for p in prompts if role_of(p.text, reported) == "train" and len(p.text) <= MAX_SUGGESTION_CHARS]


def project_prompts(langs=LANGS) -> list[PoolPrompt]:
    """The default pool: train-role prompts of the vendored public sets (English) and of CValues plus the
    project's own Chinese file (Chinese). A missing public set is skipped."""
    from . import external

    out: list[PoolPrompt] = []
    if "en" in langs:
        for name in ("advbench", "coconot_pref", "self-instruct"):
            try:
                recs = external.READERS[name]()
            except external.MissingDataError:
                continue
            out += [PoolPrompt(r.text, r.kind, "en", r.source, r.id) for r in recs if r.kind in CATEGORIES]
    if "zh" in langs:
        try:
            out += [PoolPrompt(r.text, r.kind, "zh", r.source, r.id) for r in external.cvalues_zh()]
        except external.MissingDataError:
            pass
        out += read_pool_file(ZH_FILE, default_lang="zh", check_reported=False)
    return _train_only(out)


def project_pool() -> PromptPool:
    return PromptPool(project_prompts(), name="project")


# -- an admin's pool --------------------------------------------------------------------------------------------
def read_pool_file(path: Path | str, default_lang: str = "en", check_reported: bool = True) -> list[PoolPrompt]:
    """Rows of a JSONL pool file; a broken row raises :class:`PromptPoolError` naming ``file:line``."""
    path = Path(path)
    reported = reported_prompt_keys() if check_reported else frozenset()
    out = []
    for where, row in iter_jsonl(path, PromptPoolError):
        text = text_field(row.get("prompt"), where, "prompt", PromptPoolError).strip()
        category = row.get("category")
        if category not in CATEGORIES:
            raise PromptPoolError(f"{where}: field 'category' must be one of {', '.join(CATEGORIES)}, "
                                  f"got {category!r}")
        lang = row.get("lang", default_lang)
        if lang not in LANGS:
            raise PromptPoolError(f"{where}: field 'lang' must be one of {', '.join(LANGS)}, got {lang!r}")
        if len(text) > MAX_SUGGESTION_CHARS * 5:
            raise PromptPoolError(f"{where}: the prompt is {len(text)} characters; at most "
                                  f"{MAX_SUGGESTION_CHARS * 5}")
        if normalize_text(text) in reported:
            raise PromptPoolError(f"{where}: this prompt belongs to a reported suite (XSTest, the project's eval "
                                  "prompts or the FastChat questions); those never become training data")
        ident = row.get("id", where.rsplit(":", 1)[-1])
        out.append(PoolPrompt(text, category, lang, path.name, str(ident)))
    if not out:
        raise PromptPoolError(f"{path}: no prompts (one JSON object a line: prompt, category, lang)")
    return out


def load_pool(path: Path | str | None) -> PromptPool:
    """``--prompt-pool FILE`` when given, else the project's pool."""
    if path:
        return PromptPool(read_pool_file(path), name=Path(path).name)
    return project_pool()
