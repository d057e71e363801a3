"""The training pipeline's files, which the app reads while the pipeline runs as a separate process.

``<data dir>/pipeline/``: ``state.json`` (the export cursor and the list of past runs), ``lock`` (an
exclusive ``flock`` held by the one running pipeline), ``current.json`` (pid and run dir of the run in
progress) and ``runs/<time>/`` (one directory a run: ``status.json``, ``pipeline.log``, ``ppo/metrics.jsonl``).
The pipeline itself (``python -m arena_app.pipeline``) writes them; the Training tab only reads them and
starts the process. Core: imports nothing from ``training``, ``eval`` or the app.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from pathlib import Path

from .atomic import write_json
from .config import Settings


class PipelineBusy(RuntimeError):
    """Another pipeline run holds the lock."""


def pipeline_dir(settings: Settings) -> Path:
    return Path(settings.data_dir) / "pipeline"


def load_state(settings: Settings) -> dict:
    path = pipeline_dir(settings) / "state.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        state = {}
    state.setdefault("last_vote_id", 0)
    state.setdefault("last_better_id", 0)
    state.setdefault("runs", [])
    return state


def save_state(settings: Settings, state: dict) -> None:
    write_json(pipeline_dir(settings) / "state.json", state)  # atomic: a killed run never leaves half a state


def new_feedback(settings: Settings) -> dict:
    """Votes and better answers recorded since the last run (what the Training tab shows)."""
    from .store import Store

    state = load_state(settings)
    store = Store.from_settings(settings)
    try:
        stats = store.stats(since_vote_id=state["last_vote_id"], since_better_id=state["last_better_id"])
    finally:
        store.close()
    return dict(stats, since_vote_id=state["last_vote_id"], since_better_id=state["last_better_id"],
                last_run=state["runs"][-1] if state["runs"] else None)


@contextlib.contextmanager
def pipeline_lock(settings: Settings, wait_s: float = 3.0):
    """An exclusive ``flock`` on ``<data dir>/pipeline/lock`` (released by the OS if the process dies)."""
    path = pipeline_dir(settings) / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                fh.close()
                raise PipelineBusy(f"another pipeline run holds {path}") from None
            time.sleep(0.2)
    try:
        yield path
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def lock_held(settings: Settings) -> bool:
    """True while some process holds the pipeline lock."""
    path = pipeline_dir(settings) / "lock"
    if not path.exists():
        return False
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def new_run_dir(settings: Settings, suffix: str = "") -> Path:
    """``<data dir>/pipeline/runs/<time><suffix>`` (with -2, -3, … when that name is taken), created."""
    root = pipeline_dir(settings) / "runs"
    root.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("%Y%m%d-%H%M%S") + suffix
    for k in range(1, 1000):
        path = root / (stem if k == 1 else f"{stem}-{k}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"no free run directory under {root}")
