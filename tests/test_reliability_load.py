"""The running app (``python app.py`` in a subprocess) under load and killed with SIGKILL mid-burst.

Every vote the app acknowledged is in the feedback database exactly once, and after a SIGKILL in the
middle of a burst of votes and a restart, every acknowledged vote is still there and SQLite's
``PRAGMA integrity_check`` says ok. Same code path as ``bench/load.py`` (which reports latencies).
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.load import AppProcess, check_exactly_once, integrity, pct, run_load, stored_comments  # noqa: E402


@pytest.fixture(scope="module")
def app_proc(tmp_path_factory, tiny_model_dir):
    """One app process for the module (tiny random model, 4 new tokens); tests may kill and restart it."""
    data = tmp_path_factory.mktemp("load-app")
    app = AppProcess(data, tiny_model_dir, max_new_tokens=4).start()
    yield app
    app.stop()


def test_concurrent_users_every_acknowledged_vote_stored_exactly_once(app_proc):
    res = run_load(app_proc.url, users=8, votes=3, timeout=180)
    assert not res.errors, res.errors[:3]
    assert len(res.acked) == 24 and len(set(res.acked)) == 24
    chk = check_exactly_once(app_proc.db_path, res.acked, res.run_id)
    assert chk.ok, chk.summary()
    assert chk.unacknowledged_stored == 0
    assert len(res.first_token_s) == 24 and len(res.vote_s) == 24
    assert 0 < pct(res.vote_s, 50) <= pct(res.vote_s, 95)


@pytest.mark.slow
def test_fifty_users_twenty_votes_each_exactly_once(app_proc):
    res = run_load(app_proc.url, users=50, votes=20, timeout=600)
    assert not res.errors, res.errors[:3]
    assert len(res.acked) == 1000
    chk = check_exactly_once(app_proc.db_path, res.acked, res.run_id)
    assert chk.ok and chk.unacknowledged_stored == 0, chk.summary()


def test_app_killed_mid_burst_keeps_every_acknowledged_vote(app_proc):
    """SIGKILL the app while 6 users vote as fast as they can; restart it on the same data dir."""
    stop, box, run_id = threading.Event(), {}, uuid.uuid4().hex[:8]
    burst = threading.Thread(target=lambda: box.setdefault("res", run_load(
        app_proc.url, users=6, votes=200, run_id=run_id, stop=stop, timeout=60)), daemon=True)
    burst.start()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # kill once 12 votes of this burst are in, users mid-flight
        time.sleep(0.2)
        try:
            if sum(stored_comments(app_proc.db_path, f"load:{run_id}:").values()) >= 12:
                break
        except Exception:  # noqa: BLE001 - the database may not have the table yet
            pass
    app_proc.kill()  # SIGKILL: no shutdown handler, nothing flushed
    stop.set()
    burst.join(timeout=120)
    assert not burst.is_alive(), "the simulated users must notice the dead app"
    res = box["res"]
    assert len(res.acked) >= 6, f"the burst acknowledged only {len(res.acked)} votes before the kill"
    assert res.errors, "the kill should interrupt some in-flight calls"

    print(f"\nburst: {len(res.acked)} acknowledged, {len(res.errors)} interrupted: {res.errors[:2]}")
    app_proc.start()  # recovery: SQLite replays its WAL on open
    chk = check_exactly_once(app_proc.db_path, res.acked, res.run_id)
    assert chk.ok, chk.summary()
    assert integrity(app_proc.db_path) == "ok"
    after = run_load(app_proc.url, users=1, votes=1, timeout=120)  # the restarted app takes votes again
    assert not after.errors and check_exactly_once(app_proc.db_path, after.acked, after.run_id).ok
