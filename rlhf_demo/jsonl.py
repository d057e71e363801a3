"""One strict JSONL reader for every module that reads rows from files.

Each bad line is an error whose message starts with ``file:line`` (the editor's line numbers: blank
lines count) and says what is wrong:

* ``NUL byte at column N`` — a raw NUL byte in the line;
* ``invalid UTF-8 at byte N of the line``;
* ``bad JSON (<reason> at column N)``;
* ``a row must be a JSON object, got <type>``.

Text fields are checked with :func:`text_field`: ``field 'name' must be text, got <type>``,
``field 'name' contains a NUL character`` (an escaped ``\\u0000``), ``field 'name' is empty``.

Callers keep their own exception type: pass it as ``error`` (any class that takes one message, e.g.
``training.data.DataError``, ``rlhf_demo.external.ExternalDataError``, ``eval.suites.SuiteError``).
A caller whose users already know other wording for the same four faults may pass ``wording`` (a
partial override of :data:`WORDING`; the ``file:line`` prefix and the checks stay the same) — the
generate CLI does. ``.gz`` files are read decompressed. :func:`text_lines` applies the same per-line
checks (NUL, UTF-8) to plain-text files with one item a line (``.txt`` prompt files).

This module is core: it imports nothing from ``training`` or ``eval``.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Callable, Iterator

NUL = b"\x00"

#: The messages for the four line faults (``str.format`` fields: column, byte, reason, type).
WORDING = {
    "nul": "NUL byte at column {column}",
    "utf8": "invalid UTF-8 at byte {byte} of the line",
    "json": "bad JSON ({reason} at column {column})",
    "not_object": "a row must be a JSON object, got {type}",
}


def _words(wording: dict | None) -> dict:
    if not wording:
        return WORDING
    unknown = set(wording) - set(WORDING)
    if unknown:
        raise ValueError(f"unknown wording keys {sorted(unknown)}; use {sorted(WORDING)}")
    return {**WORDING, **wording}


class JsonlError(ValueError):
    """A file or row that cannot be read; the message starts with ``file:line`` where there is a line."""


def read_bytes(path: Path | str, error: type[Exception] = JsonlError) -> bytes:
    """The file's bytes (decompressed for ``.gz``); an unreadable file is ``error("path: cannot read (…)")``."""
    path = Path(path)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise error(f"{path}: cannot read ({exc})") from exc


def decode_line(line: bytes, where: str, error: type[Exception] = JsonlError, wording: dict | None = None) -> str:
    """One line's text; a raw NUL byte or invalid UTF-8 raises ``error("where: …")``."""
    words = _words(wording)
    if NUL in line:
        raise error(f"{where}: " + words["nul"].format(column=line.index(NUL) + 1))
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{where}: " + words["utf8"].format(byte=exc.start + 1)) from exc


def parse_line(line: bytes, where: str, error: type[Exception] = JsonlError,
               wording: dict | None = None) -> dict | None:
    """One JSONL line → its object; None for a blank line; a bad line raises ``error("where: …")``."""
    words = _words(wording)
    text = decode_line(line, where, error, words)
    if not text.strip():
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: " + words["json"].format(reason=exc.msg, column=exc.colno)) from exc
    if not isinstance(row, dict):
        raise error(f"{where}: " + words["not_object"].format(type=type(row).__name__))
    return row


def jsonl_rows(raw: bytes, path: Path | str, error: type[Exception] = JsonlError,
               on_error: Callable[[Exception], None] | None = None,
               wording: dict | None = None) -> Iterator[tuple[int, str, dict]]:
    """``(line number, "file:line", row)`` for every non-blank line of ``raw`` (the bytes of ``path``).

    A bad line raises ``error`` naming ``file:line`` — or, with ``on_error``, is handed to it and skipped.
    """
    words = _words(wording)
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        where = f"{path}:{lineno}"
        try:
            row = parse_line(line, where, error, words)
        except error as exc:
            if on_error is None:
                raise
            on_error(exc)
            continue
        if row is not None:
            yield lineno, where, row


def iter_jsonl(path: Path | str, error: type[Exception] = JsonlError,
               on_error: Callable[[Exception], None] | None = None,
               wording: dict | None = None) -> Iterator[tuple[str, dict]]:
    """``("file:line", row)`` for every non-blank line of the file at ``path`` (``.gz`` allowed); see
    :func:`jsonl_rows`. The file is read when iteration starts."""
    for _, where, row in jsonl_rows(read_bytes(path, error), path, error, on_error, wording):
        yield where, row


def text_lines(path: Path | str, error: type[Exception] = JsonlError,
               wording: dict | None = None) -> Iterator[tuple[int, str, str]]:
    """``(line number, "file:line", stripped text)`` for every non-blank line of a plain-text file (one item a
    line, ``.gz`` allowed); a NUL byte or invalid UTF-8 raises ``error`` naming ``file:line``, as for JSONL."""
    for lineno, line in enumerate(read_bytes(path, error).split(b"\n"), start=1):
        where = f"{path}:{lineno}"
        text = decode_line(line, where, error, wording).strip()
        if text:
            yield lineno, where, text


def text_field(value, where: str, name: str, error: type[Exception] = JsonlError, allow_empty: bool = False) -> str:
    """``value`` when it is text without NUL (and not blank unless ``allow_empty``); else ``error("where: field …")``.
    Returned as given (not stripped)."""
    if not isinstance(value, str):
        raise error(f"{where}: field {name!r} must be text, got {type(value).__name__}")
    if "\x00" in value:
        raise error(f"{where}: field {name!r} contains a NUL character")
    if not allow_empty and not value.strip():
        raise error(f"{where}: field {name!r} is empty")
    return value


def parse_where(items) -> list[tuple[str, str]]:
    """``["split=holdout", ...]`` (a ``--where FIELD=VALUE`` flag, repeatable) -> ``[("split", "holdout"), ...]``;
    an item without ``=`` or without a field name is a ValueError that quotes it."""
    out = []
    for item in items or []:
        name, sep, value = str(item).partition("=")
        if not sep or not name:
            raise ValueError(f"--where needs FIELD=VALUE, got {item!r}")
        out.append((name, value))
    return out


def matches(row: dict, where) -> bool:
    """Whether ``row`` has every ``(field, value)`` of ``where`` (compared as strings)."""
    return all(str(row.get(k)) == v for k, v in where)
