"""One way to write files and directories atomically: a temporary sibling on the same file system,
fsync, then rename. A killed process leaves either the old file or the new one, never half of one.

* :func:`write_text` / :func:`write_jsonl` — one file (``mode`` sets its permissions, e.g. ``0o600``);
* :func:`atomic_dir` — a directory filled in a temporary sibling, fsynced and renamed into place
  (the registry's versions, checkpoints, the converted base model, eval reports);
* :func:`fsync_path` — fsync a file or directory, ignoring file systems that cannot;
* :func:`sha256_file`, :func:`read_manifest`, :func:`verify_files` — the manifests of versions and checkpoints
  (a JSON file listing every file with its SHA-256) and their check.

Core: imports nothing from ``training``, ``eval`` or the app.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator


def sha256_file(path: Path | str) -> str:
    """The SHA-256 of a file (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: Path | str) -> None:
    """fsync a file or directory; a file system that refuses (or a missing path) is ignored."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: Path | str, text: str, mode: int | None = None, fsync: bool = True) -> Path:
    """Write ``text`` to ``path`` atomically (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path | str, obj, mode: int | None = None, **dump_kw) -> Path:
    """``obj`` as JSON (``indent=2``, ``default=str`` unless given), atomically."""
    dump_kw.setdefault("indent", 2)
    dump_kw.setdefault("default", str)
    return write_text(path, json.dumps(obj, **dump_kw), mode=mode)


def write_jsonl(path: Path | str, rows: Iterable[dict]) -> Path:
    """One JSON object a line (UTF-8, not ASCII-escaped), atomically."""
    return write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


@contextlib.contextmanager
def atomic_dir(final: Path | str, replace: bool = False, prefix: str | None = None) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``final``; on a clean exit fsync every file in it and
    rename it to ``final`` (``replace``: an existing ``final`` is removed first; otherwise the rename
    fails if it exists). On any exception the temporary directory is removed and ``final`` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix or f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                fsync_path(f)
        fsync_path(tmp)
        if replace and final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)  # atomic on one file system
        fsync_path(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_manifest(path: Path | str, error: type[Exception], missing: str, what: str = "unreadable card") -> dict:
    """The JSON manifest at ``path`` (a version's ``card.json``, a checkpoint's ``state.json``); a missing file
    is ``error(missing)``, an unreadable one ``error("<path>: <what> (why)")``."""
    path = Path(path)
    if not path.is_file():
        raise error(missing)
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: {what} ({exc})") from exc


def verify_files(folder: Path | str, files: dict[str, str], error: type[Exception],
                 missing: str = "{folder}: {name} is missing",
                 corrupt: str = "{file}: content does not match its SHA-256 (corrupt or truncated)") -> None:
    """Every file a manifest lists (``name -> SHA-256``) is in ``folder`` with that content; else ``error``
    with ``missing`` / ``corrupt`` filled in (``{folder}``, ``{name}``, ``{file}``)."""
    folder = Path(folder)
    for name, digest in files.items():
        f = folder / name
        if not f.is_file():
            raise error(missing.format(folder=folder, name=name, file=f))
        if sha256_file(f) != digest:
            raise error(corrupt.format(folder=folder, name=name, file=f))
