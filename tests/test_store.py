"""The feedback database: every field, append-only, one vote per round, concurrency, failures, voids.

The tests that take the ``store`` fixture (or ``db_url``) run twice: on a SQLite file and on a real
PostgreSQL server (tests/pg_server.py; skipped without its binaries, a failure under CI=true).
"""

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
                             StoreError, TurnRecord, VoidRefused, VoteRecord)

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


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture()
def store(db_url):
    s = Store(db_url)
    yield s
    s.close()


@pytest.fixture()
def sqlite_store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'feedback.db'}")
    yield s
    s.close()


TABLES = {"schema_version", "conversations", "turns", "votes", "better_answers", "vote_voids"}


def test_sqlite_pragmas_schema_version_and_tables(sqlite_store):
    store = sqlite_store
    with store.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10000
    assert store.schema_version() == SCHEMA_VERSION
    assert set(sa.inspect(store.engine).get_table_names()) >= TABLES
    assert store.integrity_check() == "ok"


def test_postgresql_commits_synchronously_and_has_the_triggers(pg_url):
    store = Store(pg_url)
    assert store.is_postgres and store.problem is None
    with store.engine.connect() as c:
        assert c.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
        assert c.exec_driver_sql("SHOW fsync").scalar() == "on"
        triggers = {r[0] for r in c.exec_driver_sql(
            "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal").all()}
    assert store.schema_version() == SCHEMA_VERSION
    assert set(sa.inspect(store.engine).get_table_names()) >= TABLES
    assert {f"{t}_no_{op}" for t in ("conversations", "turns", "votes", "better_answers", "vote_voids")
            for op in ("change", "truncate")} <= triggers
    assert store.integrity_check() == "n/a"
    plain = Store(pg_url.replace("postgresql+psycopg://", "postgresql://"))  # no driver named: psycopg 3
    assert plain.engine.dialect.driver == "psycopg" and plain.schema_version() == SCHEMA_VERSION
    plain.close()
    again = Store(pg_url)  # a second process on the same database: schema creation is idempotent
    assert again.problem is None and again.schema_version() == SCHEMA_VERSION
    again.close()
    store.close()


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
    store.void_vote(1, "spam", user="admin")
    sqls = ["UPDATE votes SET winner='right'", "DELETE FROM votes", "DELETE FROM better_answers",
            "UPDATE conversations SET \"user\"='mallory'", "UPDATE vote_voids SET reason='x'",
            "DELETE FROM vote_voids"]
    if store.is_postgres:
        sqls += ["TRUNCATE votes CASCADE", "TRUNCATE vote_voids"]
    for sql in sqls:
        with pytest.raises(sa.exc.DatabaseError, match="append-only"):
            with store.engine.begin() as c:
                c.exec_driver_sql(sql)
    assert store.votes(include_voided=True)[0]["winner"] == "left" and len(store.voids()) == 1


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
    assert store.integrity_check() in ("ok", "n/a")


def test_void_is_a_new_record_and_hides_the_vote(store):
    first = store.record_vote(conv("c1"), vote("c1"))
    second = store.record_vote(conv("c2"), vote("c2", winner="right"))
    vid = store.void_vote(first, "  cast by mistake ", user="admin")
    assert [v["id"] for v in store.votes()] == [second]  # what export, leaderboard and training read
    both = store.votes(include_voided=True)  # the database still holds both votes, unchanged
    assert [(v["id"], v["voided"], v["winner"]) for v in both] == [(first, True, "left"), (second, False, "right")]
    assert all(type(v["voided"]) is bool for v in both)
    (void,) = store.voids()
    assert (void["id"], void["vote_id"], void["reason"], void["user"]) == (vid, first, "cast by mistake", "admin")
    assert void["created_at"] is not None and void["app_version"]
    assert store.stats()["voids"] == 1 and store.stats()["votes"] == 2
    assert store.count_votes(user="alice") == 2  # the rate limit still counts what was cast


def test_void_of_an_unknown_or_voided_vote_or_without_reason_is_refused(store):
    vid = store.record_vote(conv(), vote())
    with pytest.raises(VoidRefused, match="no vote with id 999"):
        store.void_vote(999, "spam")
    with pytest.raises(VoidRefused, match="needs a reason"):
        store.void_vote(vid, "   ")
    with pytest.raises(VoidRefused, match="must be a number"):
        store.void_vote("abc", "spam")
    store.void_vote(vid, "spam")
    with pytest.raises(VoidRefused, match="voided already"):
        store.void_vote(vid, "again")
    assert len(store.voids()) == 1 and len(store.votes(include_voided=True)) == 1


def test_a_v1_database_gains_the_voids_table(tmp_path):
    path = tmp_path / "old.db"
    old = Store(f"sqlite:///{path}")
    old.record_vote(conv(), vote())
    with old.engine.begin() as c:  # what a v1 database looked like: no vote_voids, schema v1
        c.exec_driver_sql("DROP TABLE vote_voids")
        c.exec_driver_sql("DROP TRIGGER votes_no_delete")
        c.exec_driver_sql("DELETE FROM schema_version")
        c.exec_driver_sql("INSERT INTO schema_version VALUES (1, '2026-01-01', 'old')")
    old.close()
    s = Store(f"sqlite:///{path}")
    assert s.problem is None and s.schema_version() == SCHEMA_VERSION
    s.void_vote(1, "spam")
    assert s.votes() == [] and len(s.votes(include_voided=True)) == 1
    s.close()


def test_pairing_reason_and_suggested_prompts_are_stored(store):
    pairing = {"reason": "replay", "replay_of": 7, "detail": "overlap set"}
    c = ConversationRecord(id="c9", left_policy="sft", right_policy="rlhf-v1", swapped=False, blind=True,
                           user="bob", pairing=pairing)
    meta = {"category": "harmful", "lang": "zh", "ref": "prompt_pool_zh.jsonl:zh-harm-01"}
    store.record_turn(c, TurnRecord(conversation_id="c9", turn=1, user_message="hi", left_answer="a",
                                    right_answer="b", prompt_source="suggested", prompt_meta=meta))
    v = vote("c9", user="bob")
    v.pairing, v.prompts = pairing, [{"turn": 1, "source": "suggested", **meta}]
    store.record_vote(c, v)
    (row,) = store.votes()
    assert row["pairing"] == pairing and row["prompts"] == [{"turn": 1, "source": "suggested", **meta}]
    (t,) = store.turns("c9")
    assert (t["prompt_source"], t["prompt_meta"]) == ("suggested", meta)
    assert store.conversations()[0]["pairing"] == pairing


def test_a_v2_database_gains_the_v3_columns(tmp_path):
    path = tmp_path / "v2.db"
    old = Store(f"sqlite:///{path}")
    old.record_vote(conv(), vote())
    old.close()
    import sqlite3

    db = sqlite3.connect(path)  # what a v2 database looked like: none of the v3 columns, schema v2
    for table, col in (("votes", "pairing"), ("votes", "prompts"), ("turns", "prompt_source"),
                       ("turns", "prompt_meta"), ("conversations", "pairing")):
        db.execute(f"ALTER TABLE {table} DROP COLUMN {col}")
    db.execute("DELETE FROM schema_version")
    db.execute("INSERT INTO schema_version VALUES (2, '2026-01-01', 'old')")
    db.commit()
    db.close()
    s = Store(f"sqlite:///{path}")
    assert s.problem is None and s.schema_version() == SCHEMA_VERSION == 3
    (old_vote,) = s.votes()
    assert old_vote["pairing"] is None and old_vote["prompts"] is None  # old rows read NULL
    v = vote("c2")
    v.pairing = {"reason": "boost", "version": "rlhf-v1"}
    s.record_vote(conv("c2"), v)
    assert s.votes()[-1]["pairing"] == {"reason": "boost", "version": "rlhf-v1"}
    s.close()


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


def test_acknowledged_votes_survive_sigkill(db_url):
    code = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "tests")!r}]
        from test_store import conv, vote
        from rlhf_demo.store import Store
        s = Store({db_url!r})
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
    s = Store(db_url)
    stored = [v["conversation_id"] for v in s.votes()]
    assert set(acked) <= set(stored) and len(stored) == len(set(stored))
    assert s.integrity_check() in ("ok", "n/a")
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


def test_postgresql_server_down_gives_a_clear_error(pg_server):
    from pg_server import _free_port

    s = Store(f"postgresql+psycopg://arena@127.0.0.1:{_free_port()}/nothing")  # nobody listens there
    assert s.problem and "cannot be written" in s.problem and "127.0.0.1" in s.problem
    with pytest.raises(StoreError, match="cannot be written"):
        s.record_vote(conv(), vote())
    s.close()
