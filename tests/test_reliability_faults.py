"""Resource faults: the disk fills up, the database turns read-only, the data dir is unwritable.

Each gives a clear error in the log, the arena keeps answering, the user is told that feedback
cannot be saved right now, and once the fault is gone the next vote is saved without a restart.
(The tests run as root, so permissions cannot make a directory unwritable: the faults are
injected where SQLite reports them — the DB-API cursor — or with a file where a directory must be.)
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import sys
from pathlib import Path

import pytest
from sqlalchemy import event

from test_app import chats, client, launch, texts, world  # noqa: F401  (module fixture: tiny model + rlhf-v0)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STORE_DOWN = "cannot be saved right now"


class Fault:
    """Raise ``error`` from every INSERT while ``on`` (SQLAlchemy wraps it as the driver's error would be)."""

    def __init__(self, store, error):
        self.on, self.error, self.hits = False, error, 0

        @event.listens_for(store.engine, "before_cursor_execute")
        def _maybe_fail(conn, cursor, statement, params, context, executemany):
            if self.on and statement.lstrip().upper().startswith("INSERT"):
                self.hits += 1
                raise self.error


@pytest.mark.parametrize("error,hint", [
    (sqlite3.OperationalError("database or disk is full"), "(is the disk full?)"),
    (OSError(errno.ENOSPC, "No space left on device"), "(is the disk full?)"),
    (sqlite3.OperationalError("attempt to write a readonly database"), "(is the data directory writable?)"),
], ids=["sqlite-full", "enospc", "read-only"])
def test_write_fault_mid_session_arena_keeps_serving_and_recovers(world, tmp_path, caplog, error, hint):  # noqa: F811
    from gradio_client.exceptions import AppError

    from rlhf_demo.store import Store

    store = Store(f"sqlite:///{tmp_path / 'feedback.db'}")
    fault = Fault(store, error)
    app, url = launch(world, store=store)
    try:
        c = client(url)
        c.predict("before the fault", api_name="/send")
        c.predict([], "saved", api_name="/vote_left")
        c.predict(api_name="/new_round")

        fault.on = True
        with caplog.at_level(logging.ERROR, logger="rlhf_demo.store"):
            out = c.predict("during the fault", api_name="/send")  # the models still answer
            assert texts(chats(out)[0]) and texts(chats(out)[1])
            with pytest.raises(AppError, match=STORE_DOWN):
                c.predict([], "lost?", api_name="/vote_right")
            with pytest.raises(AppError, match=STORE_DOWN):
                c.predict("a better answer", api_name="/better_answer")
        assert fault.hits >= 3  # the turn log, the vote and the better answer all hit the fault
        assert f"feedback database {tmp_path / 'feedback.db'} cannot be written" in caplog.text and hint in caplog.text

        fault.on = False  # space freed / permissions fixed: the same round's vote now goes through
        c.predict([], "after the fault", api_name="/vote_right")
        assert [v["comment"] for v in store.votes()] == ["saved", "after the fault"]
        assert store.integrity_check() == "ok"
    finally:
        app.close()


def test_database_read_only_from_the_start(world, tmp_path):  # noqa: F811
    """SQLite's own read-only mode (PRAGMA query_only): what a read-only file or mount reports."""
    from gradio_client.exceptions import AppError

    from rlhf_demo.store import Store

    url_db = f"sqlite:///{tmp_path / 'feedback.db'}"
    Store(url_db).close()  # an existing database …
    store = Store(url_db, create=False)  # … opened where it cannot be written

    @event.listens_for(store.engine, "connect")
    def _read_only(dbapi_connection, _record):
        dbapi_connection.execute("PRAGMA query_only=ON")

    app, url = launch(world, store=store)
    try:
        c = client(url)
        out = c.predict("can you still answer?", api_name="/send")
        assert texts(chats(out)[0])
        with pytest.raises(AppError, match=STORE_DOWN):
            c.predict([], "", api_name="/vote_tie")
        assert store.votes() == []  # reading still works (the leaderboard keeps showing)
        summary, *_ = c.predict(False, api_name="/leaderboard")
        assert "No votes yet" in summary or "votes" in summary.lower()
    finally:
        app.close()


def test_app_entry_point_with_an_unwritable_data_dir_serves_and_says_why(tiny_model_dir, tmp_path):
    """``python app.py --data-dir X`` where X cannot hold a database: it starts, logs why, and serves."""
    from gradio_client.exceptions import AppError

    from bench.load import AppProcess

    blocker = tmp_path / "data-dir-is-a-file"
    blocker.write_text("not a directory")
    app = AppProcess(blocker, tiny_model_dir, max_new_tokens=4, log_path=tmp_path / "app.log")
    app.start()
    try:
        log = (tmp_path / "app.log").read_text()
        assert f"feedback database {blocker / 'feedback.db'} cannot be written" in log
        assert "the arena serves, but cannot save feedback until this is fixed" in log
        c = client(app.url)
        out = c.predict("still there?", api_name="/send")
        assert texts(chats(out)[0]) and texts(chats(out)[1])
        with pytest.raises(AppError, match=STORE_DOWN):
            c.predict([], "", api_name="/vote_left")
    finally:
        app.stop()
    assert blocker.read_text() == "not a directory"


def test_store_errors_name_the_database_and_the_cause(tmp_path):
    """The same faults at the store API: a StoreError with the path and a hint; nothing half-written."""
    from rlhf_demo.store import Store, StoreError
    from test_store import conv, vote

    store = Store(f"sqlite:///{tmp_path / 'f.db'}")
    fault = Fault(store, sqlite3.OperationalError("database or disk is full"))
    store.record_vote(conv("c0"), vote("c0"))
    fault.on = True
    with pytest.raises(StoreError, match=r"f\.db cannot be written: database or disk is full \(is the disk full\?\)"):
        store.record_vote(conv("c1"), vote("c1"))
    fault.on = False
    assert [c["id"] for c in store.conversations()] == ["c0"], "the failed transaction left no conversation row"
    store.record_vote(conv("c1"), vote("c1"))
    assert [v["conversation_id"] for v in store.votes()] == ["c0", "c1"]
    store.close()

