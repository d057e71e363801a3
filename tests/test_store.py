"""The feedback database: every field, append-only, one vote per round, concurrency, failures."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from rlhf_demo.store import (SCHEMA_VERSION, AlreadyVoted, BetterAnswerRecord, ConversationRecord, Store,
                             StoreError, TurnRecord, VoteRecord)

ROOT = Path(__file__).resolve().parents[1]


def conv(cid="c1", **kw):
    return ConversationRecord(id=cid, left_policy="rlhf-v1", right_policy="sft", swapped=True, blind=True,
                              left_hash="abc123", right_hash="base", user=kw.get("user", "alice"), session_id="s1")


def vote(cid="c1", winner="left", **kw):
    left = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello from left"}]
    right = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello from right"}]
    return VoteRecord(conversation_id=cid, turn=1, left_policy="rlhf-v1", right_policy="sft", winner=winner,
                      left_messages=left, right_messages=right, swapped=True, blind=True, left_hash="abc123",
                      right_hash="base", params=[{"turn": 1, "left": {"temperature": 0.7, "seed": 1},
                                                  "right": {"temperature": 0.7, "seed": 2}}],
                      latency=[{"turn": 1, "left": {"first_token_s": 0.1, "total_s": 1.0},
                                "right": {"first_token_s": 0.2, "total_s": 1.1}}],
                      reasons=["safer"], comment="nice", user=kw.get("user", "alice"), session_id="s1")


@pytest.fixture()
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'feedback.db'}")
    yield s
    s.close()


def test_sqlite_pragmas_schema_version_and_tables(store):
    with store.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10000
    assert store.schema_version() == SCHEMA_VERSION
    assert set(sa.inspect(store.engine).get_table_names()) >= {
        "schema_version", "conversations", "turns", "votes", "better_answers"}
    assert store.integrity_check() == "ok"


def test_vote_stores_every_field(store):
    vid = store.record_vote(conv(), vote())
    (row,) = store.votes()
    assert row["id"] == vid
    expected = dict(conversation_id="c1", turn=1, user="alice", session_id="s1", left_policy="rlhf-v1",
                    right_policy="sft", left_hash="abc123", right_hash="base", swapped=True, blind=True,
                    winner="left", reasons=["safer"], comment="nice")
    assert {k: row[k] for k in expected} == expected
    assert row["left_messages"][-1]["content"] == "hello from left"
    assert row["right_messages"][-1]["content"] == "hello from right"
    assert row["params"][0]["left"]["seed"] == 1 and row["latency"][0]["right"]["total_s"] == 1.1
    assert row["app_version"] and row["created_at"] is not None and row["vote_uid"]
    (c,) = store.conversations()
    assert c["swapped"] is True and c["left_hash"] == "abc123"


def test_second_vote_on_a_round_is_refused_and_retry_is_idempotent(store):
    first = vote()
    vid = store.record_vote(conv(), first)
    assert store.record_vote(conv(), first) == vid  # same vote re-sent (lost ack): stored once
    with pytest.raises(AlreadyVoted):
        store.record_vote(conv(), vote(winner="right"))
    assert len(store.votes()) == 1


def test_rows_are_append_only(store):
    store.record_vote(conv(), vote())
    store.record_better_answer(conv(), BetterAnswerRecord(
        conversation_id="c1", turn=1, text="better", left_messages=[], right_messages=[], left_policy="rlhf-v1",
        right_policy="sft"))
    for sql in ("UPDATE votes SET winner='right'", "DELETE FROM votes", "DELETE FROM better_answers",
                "UPDATE conversations SET user='mallory'"):
        with pytest.raises(sa.exc.DatabaseError, match="append-only"):
            with store.engine.begin() as c:
                c.exec_driver_sql(sql)
    assert store.votes()[0]["winner"] == "left"


def test_turns_log_every_attempt(store):
    for attempt in (0, 1):
        store.record_turn(conv(), TurnRecord(conversation_id="c1", turn=1, attempt=attempt, user_message="hi",
                                             left_answer=f"l{attempt}", right_answer=f"r{attempt}",
                                             params={"left": {}, "right": {}}, latency={}, finish={}))
    assert [t["left_answer"] for t in store.turns("c1")] == ["l0", "l1"]
    with pytest.raises(StoreError):
        store.record_turn(conv(), TurnRecord(conversation_id="c1", turn=1, attempt=1, user_message="hi",
                                             left_answer="", right_answer=""))


def test_bad_winner_is_refused(store):
    with pytest.raises(ValueError):
        store.record_vote(conv(), vote(winner="middle"))


def test_twenty_concurrent_users_every_vote_stored_exactly_once(store):
    per_user, users = 10, 20
    errors = []

    def user(u):
        try:
            for k in range(per_user):
                cid = f"u{u}-r{k}"
                store.record_vote(conv(cid, user=f"user{u}"), vote(cid, winner="left" if k % 2 else "tie",
                                                                   user=f"user{u}"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=user, args=(u,)) for u in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rows = store.votes()
    assert len(rows) == users * per_user
    assert len({r["conversation_id"] for r in rows}) == users * per_user
    assert store.count_votes(user="user3") == per_user
    assert store.integrity_check() == "ok"


def test_unwritable_location_gives_a_clear_error_and_recovers(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data dir should be")
    s = Store(f"sqlite:///{blocker / 'feedback.db'}")  # does not raise: the app keeps serving
    assert s.problem and "cannot be written" in s.problem
    with pytest.raises(StoreError, match="cannot be written"):
        s.record_vote(conv(), vote())
    blocker.unlink()  # the operator fixes it: the next write works without a restart
    assert s.record_vote(conv(), vote()) >= 1
    s.close()


def test_any_sqlalchemy_url(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'elsewhere' / 'x.sqlite'}")
    s.record_vote(conv(), vote())
    assert (tmp_path / "elsewhere" / "x.sqlite").is_file()
    s.close()
    mem = Store("sqlite://")
    mem.record_vote(conv(), vote())
    assert len(mem.votes()) == 1


def test_acknowledged_votes_survive_sigkill(tmp_path):
    db = tmp_path / "feedback.db"
    code = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "tests")!r}]
        from test_store import conv, vote
        from rlhf_demo.store import Store
        s = Store("sqlite:///{db}")
        k = 0
        while True:
            s.record_vote(conv(f"c{{k}}"), vote(f"c{{k}}"))
            print(f"c{{k}}", flush=True)  # the acknowledgement
            k += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    acked = []
    deadline = time.monotonic() + 60
    while len(acked) < 30 and time.monotonic() < deadline:
        acked.append(proc.stdout.readline().strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(acked) >= 30
    s = Store(f"sqlite:///{db}")
    stored = {v["conversation_id"] for v in s.votes()}
    assert set(acked) <= stored
    assert s.integrity_check() == "ok"
    s.close()


def test_stats_and_a_newer_schema_is_refused(store, tmp_path):
    store.record_vote(conv(), vote())
    s = store.stats()
    assert s["votes"] == 1 and s["blind_votes"] == 1 and s["by_winner"] == {"left": 1} and s["last_vote_id"] == 1
    assert store.stats(since_vote_id=1)["votes"] == 0
    with store.engine.begin() as c:
        c.exec_driver_sql("INSERT INTO schema_version (version, applied_at, app_version) "
                          "VALUES (99, '2030-01-01', 'future')")
    newer = Store(store.url)
    assert "schema v99" in newer.problem
    with pytest.raises(StoreError, match="newer than this app"):
        newer.record_vote(conv("c2"), vote("c2"))
    newer.close()
