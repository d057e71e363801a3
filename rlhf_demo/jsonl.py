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
``.gz`` files are read decompressed.

This module is core: it imports nothing from ``training`` or ``eval``.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Callable, Iterator

NUL = b"\x00"


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


def parse_line(line: bytes, where: str, error: type[Exception] = JsonlError) -> dict | None:
    """One JSONL line → its object; None for a blank line; a bad line raises ``error("where: …")``."""
    if NUL in line:
        raise error(f"{where}: NUL byte at column {line.index(NUL) + 1}")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{where}: invalid UTF-8 at byte {exc.start + 1} of the line") from exc
    if not text.strip():
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: bad JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(row, dict):
        raise error(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    return row


def jsonl_rows(raw: bytes, path: Path | str, error: type[Exception] = JsonlError,
               on_error: Callable[[Exception], None] | None = None) -> Iterator[tuple[int, str, dict]]:
    """``(line number, "file:line", row)`` for every non-blank line of ``raw`` (the bytes of ``path``).

    A bad line raises ``error`` naming ``file:line`` — or, with ``on_error``, is handed to it and skipped.
    """
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        where = f"{path}:{lineno}"
        try:
            row = parse_line(line, where, error)
        except error as exc:
            if on_error is None:
                raise
            on_error(exc)
            continue
        if row is not None:
            yield lineno, where, row


def iter_jsonl(path: Path | str, error: type[Exception] = JsonlError,
               on_error: Callable[[Exception], None] | None = None) -> Iterator[tuple[str, dict]]:
    """``("file:line", row)`` for every non-blank line of the file at ``path`` (``.gz`` allowed); see
    :func:`jsonl_rows`. The file is read when iteration starts."""
    for _, where, row in jsonl_rows(read_bytes(path, error), path, error, on_error):
        yield where, row


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
