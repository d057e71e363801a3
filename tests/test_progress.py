"""Progress lines (done / total, rate, ETA) for the pipeline's stages: rlhf_demo/progress.py by hand, and the
pipeline's log that the Training tab shows."""

from __future__ import annotations

import json
import threading

from rlhf_demo.progress import ProgressMeter, format_duration, format_progress


def test_format_by_hand():
    assert format_duration(42) == "42s" and format_duration(185) == "3m05s" and format_duration(3720) == "1h02m"
    assert format_duration(float("nan")) == "?"
    # 90 of 200 in 60 s: 1.5/s, 110 left -> 73.3 s
    assert format_progress("eval generating", 90, 200, 60.0, "resp") == \
        "eval generating: 90/200 (45%) · 1.50 resp/s · ETA 1m13s"
    # slower than one a second: seconds per item
    assert format_progress("PPO iterations", 3, 40, 120.0, "iter") == \
        "PPO iterations: 3/40 (8%) · 40.0 s/iter · ETA 24m40s"
    assert format_progress("reward model", 50, 50, 25.0, "step") == \
        "reward model: 50/50 (100%) · 2.00 step/s · done in 25s"
    assert format_progress("x", 7, None, 14.0) == "x: 7 it · 2.0 s/it · 14s so far"  # 0.5/s
    assert format_progress("x", 0, 10, 0.0) == "x: 0/10 (0%) · ? it/s · ETA ?"


def test_meter_emits_first_then_every_interval_then_done():
    now = [0.0]
    lines = []
    m = ProgressMeter("eval generating", 10, lines.append, "resp", every_s=15, clock=lambda: now[0])
    for _ in range(10):
        now[0] += 4.0
        m.update(1)
    m.close()
    # t=4 first; then t=20 (16 s later), t=36; t=40 done (forced); close adds nothing
    assert lines == ["eval generating: 1/10 (10%) · 4.0 s/resp · ETA 36s",
                     "eval generating: 5/10 (50%) · 4.0 s/resp · ETA 20s",
                     "eval generating: 9/10 (90%) · 4.0 s/resp · ETA 4s",
                     "eval generating: 10/10 (100%) · 4.0 s/resp · done in 40s"]


def test_meter_close_reports_an_unfinished_or_totalless_count():
    now = [0.0]
    lines = []
    m = ProgressMeter("scores", None, lines.append, every_s=100, clock=lambda: now[0])
    m.update(3)
    now[0] = 6.0
    m.update(3)
    m.close()
    m.close()
    assert lines == ["scores: 3 it · ? it/s · 0s so far", "scores: 6 it · 1.00 it/s · 6s so far"]


def test_pipeline_stages_write_progress_lines_to_the_log_the_training_tab_shows(tmp_path):
    from arena_app.pipeline import Progress, follow_metrics
    from arena_app.training_tab import TrainingTab

    progress = Progress(tmp_path, echo=False)
    m = progress.meter("eval generating", 4, "resp")
    for _ in range(4):
        m.update(1)
    m.close()
    metrics = tmp_path / "ppo" / "metrics.jsonl"
    metrics.parent.mkdir()
    with follow_metrics(progress, metrics, 3, "PPO iterations", every_s=0.05):
        for step in (1, 2, 3):
            with open(metrics, "a") as fh:
                fh.write(json.dumps({"step": step, "loss": 0.1}) + "\n")
            threading.Event().wait(0.2)
    log = (tmp_path / "pipeline.log").read_text()
    assert "eval generating: 1/4 (25%)" in log and "eval generating: 4/4 (100%)" in log and "done in" in log
    assert "PPO iterations: 3/3 (100%)" in log and ("iter/s" in log or "s/iter" in log)
    tab = TrainingTab.__new__(TrainingTab)  # the tab's log view: pipeline.log's tail
    assert "eval generating: 4/4 (100%)" in tab.log_text(tmp_path)
