"""Write one benchmark's section of bench/RESULTS.md, leaving the other sections as they are."""

from __future__ import annotations

import datetime as _dt
import platform
import re
from pathlib import Path

RESULTS = Path(__file__).parent / "RESULTS.md"
HEADER = "# Benchmark results\n\nEach section is written by the script named in it; rerun that command to refresh it.\n"


def machine() -> str:
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {_dt.date.today().isoformat()}"


def load_note(before: float, after: float, threads: int) -> str:
    """"1-minute load average X before and Y after the run (…)": other jobs shared the machine when the load was above
    what the run's own ``threads`` explain (+0.5)."""
    busy = max(before, after) > threads + 0.5
    return (f"1-minute load average {before:.1f} before and {after:.1f} after the run "
            f"({'other jobs shared the machine' if busy else 'no other job ran'})")


def update_section(key: str, body: str, path: Path = RESULTS) -> None:
    text = path.read_text() if path.exists() else HEADER
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def installed_trl_version(path: Path) -> str | None:
    """The version of the trl that a bench installed into ``path`` (pip --target), or None."""
    for info in Path(path).glob("trl-*.dist-info"):
        return info.name[len("trl-"):-len(".dist-info")]
    return None


def ensure_trl(path: Path, version: str, who: str, fallback: str) -> None:
    """Make sure ``path`` holds trl==``version`` (installed there with ``pip install --no-deps --target`` if it
    holds no trl); .venv is left alone. ``who`` names the bench in messages, ``fallback`` says how to run
    without TRL. A different trl in ``path`` stops the bench (it is never overwritten)."""
    import subprocess
    import sys

    found = installed_trl_version(path)
    if found is None:
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(path), f"trl=={version}"]
        print(f"[{who}] trl=={version} is not in {path}; installing it there (.venv's packages are left alone):\n"
              f"  {' '.join(cmd)}", file=sys.stderr, flush=True)
        if subprocess.call(cmd) != 0:
            raise SystemExit(f"error: could not install trl=={version}; run the command above by hand, or {fallback}")
    elif found != version:
        raise SystemExit(f"error: {path} holds trl {found}, not {version}; remove it or pass another --trl-path")
    if not (Path(path) / "trl" / "__init__.py").is_file():
        raise SystemExit(f"error: {path} has trl-{version}.dist-info but no trl package; remove it and rerun")
