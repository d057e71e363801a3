"""The pipeline's progress: lines in ``<run dir>/pipeline.log`` and the run's state in ``status.json`` (the arena's
Training tab shows both). Every stage reports how far it is — ``done/total (percent) · rate · ETA`` lines from
:class:`rlhf_demo.progress.ProgressMeter` — at most every 15 s and when it is done."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import time
from pathlib import Path

from rlhf_demo.atomic import write_json
from rlhf_demo.progress import ProgressMeter, format_progress

STAGES = ("export", "reward", "ppo", "eval", "gates", "publish")
DPO_STAGES = ("export", "dpo", "eval", "gates", "publish")  # --algorithm dpo: no reward model, DPO from SFT


class Progress:
    """Progress lines in ``pipeline.log`` (and stdout), the run's state in ``status.json``."""

    def __init__(self, run_dir: Path, echo: bool = True, stages: tuple[str, ...] = STAGES):
        self.run_dir, self.echo, self.stages = run_dir, echo, tuple(stages)
        self.log_path, self.status_path = run_dir / "pipeline.log", run_dir / "status.json"
        self.status: dict = {"state": "running", "stage": None, "stage_index": 0, "stages": list(self.stages),
                             "pid": os.getpid(), "started": _now(), "run_dir": str(run_dir)}
        self._write_status()

    def line(self, msg: str) -> None:
        text = f"{time.strftime('%H:%M:%S')} {msg}"
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(text + "\n")
        if self.echo:
            print(f"[pipeline] {msg}", flush=True)

    def stage(self, name: str, msg: str) -> None:
        i = self.stages.index(name) + 1
        self.status.update(stage=name, stage_index=i)
        self._write_status()
        self.line(f"[{i}/{len(self.stages)} {name}] {msg}")

    def update(self, **kw) -> None:
        self.status.update(kw)
        self._write_status()

    def meter(self, label: str, total: int | None, unit: str = "it", every_s: float = 15.0) -> ProgressMeter:
        """Progress of a long step as log lines: ``done/total (percent) · rate · ETA`` (rlhf_demo.progress)."""
        return ProgressMeter(label, total, lambda msg: self.line(f"  {msg}"), unit, every_s)

    def done(self, label: str, n: int, unit: str, started: float) -> None:
        """One line for a quick step: ``label: n/n (100%) · rate · done in …``."""
        self.line(f"  {format_progress(label, n, n or None, time.monotonic() - started, unit)}")

    def _write_status(self) -> None:
        write_json(self.status_path, self.status)


@contextlib.contextmanager
def follow_metrics(progress: Progress, path: Path, total: int, label: str, every_s: float = 5.0):
    """While the block runs, a thread reads ``path`` (a metrics.jsonl with a ``step`` per row) and reports the
    newest step against ``total`` through :meth:`Progress.meter` (for loops that log metrics but take no callback)."""
    import threading

    from rlhf_demo.metrics_log import read_metrics

    meter = progress.meter(label, total, "iter")
    stop = threading.Event()

    def watch():
        while not stop.wait(every_s):
            try:
                rows = read_metrics(path)
            except Exception:  # noqa: BLE001 - a half-written file: try again at the next tick
                continue
            if rows:
                meter.set(int(rows[-1].get("step", len(rows))))

    thread = threading.Thread(target=watch, daemon=True, name="pipeline-progress")
    thread.start()
    try:
        yield meter
    finally:
        stop.set()
        thread.join(timeout=2 * every_s)
        try:
            rows = read_metrics(path)
            if rows:
                meter.set(int(rows[-1].get("step", len(rows))))
        except Exception:  # noqa: BLE001
            pass
        meter.close()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
