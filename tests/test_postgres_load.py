"""Several app processes sharing one real PostgreSQL server (tests/pg_server.py): every acknowledged vote is
stored exactly once, and a process killed with SIGKILL loses nothing it acknowledged.

* store level (fast): 2 Python processes x 10 threads ("users") x 20 votes through :class:`Store`; then two
  processes voting without end, one SIGKILLed mid-burst.
* app level (slow, ``make test-slow``): 2 ``python app.py --db-url postgresql+psycopg://…`` processes x 10
  simulated ``gradio_client`` users x 20 votes (the same driver as ``bench/load.py``); then one app SIGKILLed
  in the middle of a burst on both.

The server runs with ``synchronous_commit=on`` and ``fsync=on`` (checked here): an acknowledged vote is a
committed transaction whose WAL is on disk.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]


def stored(url: str, prefix: str) -> dict[str, int]:
    """comment -> number of stored vote rows, for votes whose comment starts with ``prefix``."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            rows = c.execute(sa.text("SELECT comment, COUNT(*) FROM votes WHERE comment LIKE :p GROUP BY comment"),
                             {"p": prefix + "%"}).all()
    finally:
        engine.dispose()
    return {k: n for k, n in rows}


def assert_exactly_once(url: str, acked: list[str], prefix: str) -> dict[str, int]:
    rows = stored(url, prefix)
    missing = [c for c in acked if c not in rows]
    doubled = {c: n for c, n in rows.items() if n > 1}
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged votes are missing: {missing[:5]}"
    assert not doubled, f"stored more than once: {list(doubled.items())[:5]}"
    assert len(set(acked)) == len(acked), "an acknowledgement was repeated"
    return rows


def check_server_settings(url: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            assert c.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
            assert c.exec_driver_sql("SHOW fsync").scalar() == "on"
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------------
# store level: processes that vote through Store (what each app process does per vote)
# ---------------------------------------------------------------------------------------------
VOTER = textwrap.dedent("""
    import sys, threading
    sys.path[:0] = [{root!r}, {tests!r}]
    from test_store import conv, vote
    from rlhf_demo.store import Store
    url, tag, users, votes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    store, lock = Store(url), threading.Lock()
    def user(u):
        k = 0
        while votes < 0 or k < votes:  # votes < 0: until killed
            cid = f"{{tag}}-u{{u}}-v{{k}}"
            v = vote(cid, winner=("left", "right", "tie", "both_bad")[k % 4], user=f"{{tag}}-user{{u}}")
            v.comment = cid
            store.record_vote(conv(cid, user=f"{{tag}}-user{{u}}"), v)
            with lock:
                print(cid, flush=True)  # the acknowledgement, after the commit returned
            k += 1
    threads = [threading.Thread(target=user, args=(u,)) for u in range(users)]
    [t.start() for t in threads]
    [t.join() for t in threads]
""").format(root=str(ROOT), tests=str(ROOT / "tests"))


def start_voter(url: str, tag: str, users: int, votes: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", VOTER, url, tag, str(users), str(votes)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_two_processes_ten_users_twenty_votes_each_stored_exactly_once(pg_url):
    from rlhf_demo.store import Store

    Store(pg_url).close()  # the schema exists before the race (the processes also create it safely)
    check_server_settings(pg_url)
    run = uuid.uuid4().hex[:6]
    procs = [start_voter(pg_url, f"{run}{tag}", users=10, votes=20) for tag in "AB"]
    acked = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
        acked += out.split()
    assert len(acked) == 2 * 10 * 20
    rows = assert_exactly_once(pg_url, acked, run)
    assert len(rows) == 400


def test_schema_created_by_two_processes_at_once(pg_url):
    """Neither process created the schema before: the advisory lock makes one wait for the other."""
    run = uuid.uuid4().hex[:6]
    procs = [start_voter(pg_url, f"{run}{tag}", users=2, votes=2) for tag in "AB"]
    acked = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        acked += out.split()
    assert_exactly_once(pg_url, acked, run)
    assert len(acked) == 8


def test_a_killed_process_loses_nothing_it_acknowledged(pg_url):
    from rlhf_demo.store import Store

    Store(pg_url).close()
    run = uuid.uuid4().hex[:6]
    victim, survivor = start_voter(pg_url, f"{run}K", users=10, votes=-1), start_voter(pg_url, f"{run}S", users=10,
                                                                                       votes=20)
    acked: list[str] = []
    deadline = time.monotonic() + 120
    while len(acked) < 60 and time.monotonic() < deadline:
        line = victim.stdout.readline().strip()
        if not line:
            break
        acked.append(line)
    os.kill(victim.pid, signal.SIGKILL)  # mid-burst: its 10 users have transactions in flight
    rest, _ = victim.communicate(timeout=60)
    acked += rest.split()  # acknowledgements already written to the pipe before the kill count too
    out, err = survivor.communicate(timeout=600)
    assert survivor.returncode == 0, err[-2000:]
    assert len(acked) >= 60, f"only {len(acked)} votes acknowledged before the kill"
    assert_exactly_once(pg_url, acked, f"{run}K")
    assert len(out.split()) == 200
    assert_exactly_once(pg_url, out.split(), f"{run}S")
    s = Store(pg_url)  # the database takes votes again, and the killed process's connections are gone
    from test_store import conv, vote
    assert s.record_vote(conv(f"{run}-after"), vote(f"{run}-after")) > 0
    s.close()


# ---------------------------------------------------------------------------------------------
# app level: two `python app.py` processes behind one PostgreSQL
# ---------------------------------------------------------------------------------------------
@pytest.fixture()
def two_apps(pg_url, tmp_path, tiny_model_dir):
    sys.path.insert(0, str(ROOT))
    from bench.load import AppProcess

    apps = [AppProcess(tmp_path / f"app{k}", tiny_model_dir, max_new_tokens=4, extra=["--db-url", pg_url])
            for k in range(2)]
    try:
        for a in apps:
            a.start()
        yield apps
    finally:
        for a in apps:
            a.stop()


def _load_both(apps, users, votes, run_ids, stop=None, timeout=600.0):
    from bench.load import run_load

    results = {}
    threads = [threading.Thread(target=lambda a=a, r=r: results.__setitem__(r, run_load(
        a.url, users=users, votes=votes, run_id=r, stop=stop, timeout=timeout)), daemon=True)
        for a, r in zip(apps, run_ids)]
    for t in threads:
        t.start()
    return threads, results


@pytest.mark.slow
def test_two_app_processes_ten_users_twenty_votes_exactly_once(two_apps, pg_url):
    check_server_settings(pg_url)
    run = uuid.uuid4().hex[:6]
    run_ids = [f"{run}a", f"{run}b"]
    threads, results = _load_both(two_apps, 10, 20, run_ids)
    for t in threads:
        t.join(timeout=1800)
    for r in run_ids:
        res = results[r]
        assert not res.errors, res.errors[:3]
        assert len(res.acked) == 200
        rows = assert_exactly_once(pg_url, res.acked, f"load:{r}:")
        assert len(rows) == 200  # nothing stored that was not acknowledged


@pytest.mark.slow
def test_killed_app_process_loses_nothing_acknowledged(two_apps, pg_url):
    victim, survivor = two_apps
    run = uuid.uuid4().hex[:6]
    stop = threading.Event()
    threads, results = _load_both([victim], 6, 200, [f"{run}k"], stop=stop, timeout=60)
    s_threads, s_results = _load_both([survivor], 4, 5, [f"{run}s"])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and sum(stored(pg_url, f"load:{run}k:").values()) < 12:
        time.sleep(0.2)
    victim.kill()  # SIGKILL
    stop.set()
    for t in threads + s_threads:
        t.join(timeout=600)
    res = results[f"{run}k"]
    assert len(res.acked) >= 6 and res.errors, (len(res.acked), res.errors[:2])
    assert_exactly_once(pg_url, res.acked, f"load:{run}k:")
    other = s_results[f"{run}s"]
    assert not other.errors and len(other.acked) == 20, other.errors[:3]  # the other process kept serving
    assert_exactly_once(pg_url, other.acked, f"load:{run}s:")
