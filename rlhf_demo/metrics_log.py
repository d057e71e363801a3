"""One metrics log for every trainer (PPO, the reward model) and one reader for everything that shows it
(the Training tab, the evaluation report's training curves).

``<run dir>/metrics.jsonl``: one JSON object a line, each with ``step``. A killed run may leave a torn last
line: the reader skips any line that is not a JSON object, and :meth:`MetricsLog.truncate_after` (a resume)
rewrites the file atomically without it. TensorBoard scalars (``<run dir>/tensorboard``) when asked.
Core: imports nothing from ``training``, ``eval`` or the app.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from .atomic import write_text
from .jsonl import JsonlError, jsonl_rows, read_bytes

log = logging.getLogger(__name__)


def read_metrics(path: Path | str) -> list[dict]:
    """The rows of a ``metrics.jsonl``; a missing file is ``[]``, a torn or non-object line is skipped."""
    try:
        raw = read_bytes(path)
    except JsonlError:
        return []
    # the shared reader, told to skip bad lines: a row being written, or the torn last line of a killed run
    return [row for _, _, row in jsonl_rows(raw, path, on_error=lambda exc: None)]


class MetricsLog:
    """Appends ``{"step": …, **metrics}`` rows (``timestamp``: and ``"time"``) to ``<run_dir>/metrics.jsonl``;
    ``report_to`` (a name or a list of names) containing ``"tensorboard"`` also writes TensorBoard scalars."""

    def __init__(self, run_dir: Path | str, report_to: str | list[str] | tuple = "jsonl", timestamp: bool = False):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.timestamp = timestamp
        self.tb = None
        names = [report_to] if isinstance(report_to, str) else list(report_to or [])
        if "tensorboard" in names:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:  # pragma: no cover
                log.warning("tensorboard is not installed; metrics go to metrics.jsonl only")

    def log(self, step: int, metrics: dict) -> None:
        row = {"step": step, **({"time": round(time.time(), 3)} if self.timestamp else {}), **metrics}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    write = log  # the reward-model trainer's name for it

    def rows(self) -> list[dict]:
        return read_metrics(self.path)

    def truncate_after(self, step: int) -> None:
        """On resume, forget the rows logged after the checkpoint's ``step`` (they are logged again), atomically."""
        truncate_metrics(self.path, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def truncate_metrics(path: Path | str, step: int) -> None:
    """Keep the rows of ``path`` up to ``step`` (a torn line is dropped), atomically; no file, nothing to do."""
    path = Path(path)
    if not path.is_file():
        return
    keep = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
