"""Rows of preference files → :class:`rlhf_demo.records.PreferencePair`, with ``file:line`` errors.

Row formats: TRL conversational (``prompt`` messages, ``chosen``/``rejected`` assistant messages, or whole
conversations with an implicit prompt), TRL standard (three texts), HH-RLHF text (``\\n\\nHuman: …``),
each with an optional numeric ``margin``. Lines are read by the one JSONL reader, :mod:`rlhf_demo.jsonl`.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Callable, Iterator

from rlhf_demo.jsonl import iter_jsonl, text_field
from rlhf_demo.records import PreferencePair

ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """A data source or row that cannot be used; the message names ``file:line`` where it can."""


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


def check_record(pair: PreferencePair, where: str, source: str) -> PreferencePair | None:
    """A typed record (the arena export's) under the rules :func:`pair_from_row` applies to a row: the prompt ends
    with a user message; None for identical answers. Returns a copy with ``source`` set."""
    if not pair.prompt or pair.prompt[-1].get("role") != "user":
        raise DataError(f"{where}: the prompt must end with a user message")
    for name in ("chosen", "rejected"):
        if not isinstance(getattr(pair, name), str):
            raise DataError(f"{where}: {name!r} must be a string")
    if pair.chosen.strip() == pair.rejected.strip():
        return None
    return dataclasses.replace(pair, source=source)


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
