"""Progress lines for long stages: ``done / total (percent) · rate · ETA``, written to a log at a steady pace.

:class:`ProgressMeter` has the small part of tqdm's interface that the project's loops use (``update(n)``,
``total``, ``n``, ``close()``, ``set_postfix``), so a loop that takes a tqdm bar can report into the pipeline's log
(which the arena's Training tab shows) instead: a line at the first update, then at most one every ``every_s``
seconds, and one when the stage is done. Pure formatting in :func:`format_progress` (tested by hand).
This module is core: it imports nothing from ``training`` or ``eval``.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``; ``?`` for an unknown (NaN/inf/negative) duration."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def format_rate(per_s: float, unit: str) -> str:
    """``2.5 resp/s`` or, below one a second, ``12.0 s/resp``."""
    if per_s <= 0 or not math.isfinite(per_s):
        return f"? {unit}/s"
    if per_s >= 1:
        return f"{per_s:.2f} {unit}/s"
    return f"{1 / per_s:.1f} s/{unit}"


def format_progress(label: str, done: int, total: int | None, elapsed_s: float, unit: str = "it") -> str:
    """``label: 90/200 (45%) · 1.45 resp/s · ETA 1m16s`` (no ETA without a total; ``done in …`` when complete)."""
    rate = done / elapsed_s if elapsed_s > 0 else float("nan")
    if total:
        head = f"{label}: {done}/{total} ({100 * done / total:.0f}%)"
        if done >= total:
            return f"{head} · {format_rate(rate, unit)} · done in {format_duration(elapsed_s)}"
        eta = (total - done) / rate if rate > 0 else float("nan")
        return f"{head} · {format_rate(rate, unit)} · ETA {format_duration(eta)}"
    return f"{label}: {done} {unit} · {format_rate(rate, unit)} · {format_duration(elapsed_s)} so far"


class ProgressMeter:
    """Counts work done and emits :func:`format_progress` lines through ``emit`` (thread-safe)."""

    def __init__(self, label: str, total: int | None, emit: Callable[[str], None], unit: str = "it",
                 every_s: float = 15.0, clock: Callable[[], float] = time.monotonic):
        self.label, self.total, self.emit, self.unit = label, total, emit, unit
        self.every_s, self.clock = every_s, clock
        self.n = 0
        self.start = clock()
        self._last: float | None = None
        self._last_n: int | None = None  # the count of the last line written
        self._closed = False
        self._lock = threading.Lock()

    def line(self) -> str:
        return format_progress(self.label, self.n, self.total, self.clock() - self.start, self.unit)

    def _maybe_emit(self, force: bool = False) -> None:
        now = self.clock()
        if force or self._last is None or now - self._last >= self.every_s:
            self._last, self._last_n = now, self.n
            self.emit(format_progress(self.label, self.n, self.total, now - self.start, self.unit))

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.n += n
            self._maybe_emit(force=bool(self.total) and self.n >= self.total)

    def set(self, done: int) -> None:
        """Set the count (for work counted elsewhere, e.g. rows of a metrics file)."""
        with self._lock:
            if done == self.n:
                return
            self.n = done
            self._maybe_emit(force=bool(self.total) and self.n >= self.total)

    def set_postfix(self, *args, **kwargs) -> None:  # tqdm compatibility
        pass

    def close(self) -> None:
        """The final line (once), unless the last line already showed this count."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.n and self.n != self._last_n:
                self._maybe_emit(force=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
