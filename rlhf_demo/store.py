"""The feedback database: every vote, better answer and generated turn, append-only.

SQLAlchemy Core on any URL (``--db-url``); by default a SQLite file ``feedback.db`` in the data
dir, opened in WAL mode with ``synchronous=FULL`` (a vote acknowledged to the user is on disk,
and survives the process being killed) and a busy timeout (concurrent writers wait instead of
failing). On PostgreSQL (``postgresql+psycopg://…``, the psycopg 3 driver) a vote is acknowledged
after its transaction commits, which with the server's default ``synchronous_commit=on`` means its
WAL record is flushed; several app processes can share one server (schema creation is serialised
by an advisory lock). Rows are only ever inserted: the API has no update or delete, and triggers
(SQLite and PostgreSQL) refuse UPDATE and DELETE (and, on PostgreSQL, TRUNCATE) on the feedback
tables. One vote per conversation (a unique constraint), so a second vote on the same round is
refused by the database too.

Voiding. A vote cast by mistake or by a spammer is taken out by a *void*: a new row in
``vote_voids`` (vote id, reason, who, when), append-only like the rest, at most one per vote. The
vote itself stays. :meth:`Store.votes` leaves voided votes out unless ``include_voided=True``, so
the export, the leaderboard and the training data (all read through it) honour voids.

A store that cannot write (read-only directory, disk full, server down) raises :class:`StoreError`
with a message that says why; it retries on the next write, so the arena keeps serving meanwhile.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
import threading
from dataclasses import asdict
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from . import __version__
from .store_schema import (ADDED_COLUMNS, APPEND_ONLY, MAX_VOID_REASON_CHARS, PG_SCHEMA_LOCK, SCHEMA_VERSION,  # noqa: F401
                           _PG_APPEND_ONLY_FN, BetterAnswerRecord, ConversationRecord, TurnRecord, VoteRecord,
                           better_answers, conversations, metadata, schema_version_table, turns, vote_voids, votes)

log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """The feedback database cannot be read or written; the message says which and why."""


class AlreadyVoted(StoreError):
    """This conversation has a vote already (votes are final)."""


class VoidRefused(StoreError):
    """A void the store refuses: unknown vote, vote voided already, or no reason given."""


_BAD_CHARS = re.compile(r"[\x00\ud800-\udfff]")


def clean(value):
    """Strings as every driver and JSON encoder accepts them: no NUL, no lone surrogates (→ U+FFFD)."""
    if isinstance(value, str):
        return _BAD_CHARS.sub(lambda m: "" if m.group() == "\x00" else "\ufffd", value)
    if isinstance(value, dict):
        return {clean(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def row(record) -> dict:
    return clean(asdict(record))


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)




def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cur = dbapi_connection.cursor()
    try:
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
    finally:
        cur.close()


class Store:
    """Append-only feedback database. Thread-safe (one engine, a connection per operation)."""

    def __init__(self, url: str, create: bool = True):
        self.url = url
        self._lock = threading.Lock()
        self._ready = False
        self.problem: str | None = None
        u = sa.engine.make_url(url)
        if u.drivername == "postgresql":  # SQLAlchemy's default driver there is psycopg2; ours is psycopg 3
            u = u.set(drivername="postgresql+psycopg")
        self.is_sqlite = u.get_backend_name() == "sqlite"
        self.is_postgres = u.get_backend_name() == "postgresql"
        kwargs = {}
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            self.path = Path(u.database) if u.database and u.database != ":memory:" else None
            if self.path is None:
                kwargs["poolclass"] = sa.pool.StaticPool  # one shared in-memory database
        else:
            self.path = None
            kwargs["pool_pre_ping"] = True
        self.engine = sa.create_engine(u, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        if create:
            try:
                self.ensure_schema()
            except StoreError as exc:  # keep going: the app serves and says feedback can't be saved
                log.error("%s", exc)

    @classmethod
    def from_settings(cls, settings) -> "Store":
        return cls(settings.database_url)

    @property
    def where(self) -> str:
        return str(self.path) if self.path else sa.engine.make_url(self.url).render_as_string(hide_password=True)

    # -- schema -------------------------------------------------------------------------------
    def ensure_schema(self) -> None:
        """Create the tables (and SQLite's append-only triggers); check the schema version."""
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            try:
                if self.path is not None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                if not self.is_postgres:
                    metadata.create_all(self.engine)
                with self.engine.begin() as conn:
                    if self.is_postgres:  # DDL is transactional there: one process at a time creates it all
                        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_SCHEMA_LOCK})
                        metadata.create_all(conn)
                    self._add_columns(conn)
                    self._create_triggers(conn)
                    found = conn.execute(sa.select(sa.func.max(schema_version_table.c.version))).scalar()
                    if found is not None and found > SCHEMA_VERSION:
                        raise StoreError(f"the feedback database {self.where} has schema v{found}, newer than this "
                                         f"app understands (v{SCHEMA_VERSION}); upgrade the app")
                    if found is None or found < SCHEMA_VERSION:  # new database, or v1 + the vote_voids table
                        conn.execute(schema_version_table.insert().values(version=SCHEMA_VERSION, applied_at=utcnow(),
                                                                    app_version=__version__))
            except StoreError as exc:
                self.problem = str(exc)
                raise
            except (SQLAlchemyError, OSError) as exc:
                self.problem = self._explain(exc)
                raise StoreError(self.problem) from exc
            self._ready = True
            self.problem = None

    def _add_columns(self, conn) -> None:
        """Bring an older database's tables up to date: ALTER TABLE ADD COLUMN for each missing nullable column
        of :data:`ADDED_COLUMNS` (adding a column is not an UPDATE: the append-only triggers allow it)."""
        have = sa.inspect(conn)
        for table, cols in ADDED_COLUMNS.items():
            present = {c["name"] for c in have.get_columns(table)}
            for name in cols:
                if name not in present:
                    col = metadata.tables[table].c[name]
                    kind = col.type.compile(dialect=conn.dialect)
                    conn.exec_driver_sql(f'ALTER TABLE {table} ADD COLUMN "{name}" {kind}')

    def _create_triggers(self, conn) -> None:
        """Refuse UPDATE and DELETE (PostgreSQL: TRUNCATE too) on the append-only tables, in the database."""
        if self.is_sqlite:
            for table in APPEND_ONLY:
                for op in ("UPDATE", "DELETE"):
                    conn.exec_driver_sql(
                        f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
                        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END")
        elif self.is_postgres:
            conn.exec_driver_sql(_PG_APPEND_ONLY_FN)
            for table in APPEND_ONLY:
                conn.exec_driver_sql(f"CREATE OR REPLACE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table} "
                                     "FOR EACH ROW EXECUTE FUNCTION arena_append_only()")
                conn.exec_driver_sql(f"CREATE OR REPLACE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                                     "FOR EACH STATEMENT EXECUTE FUNCTION arena_append_only()")
        else:
            log.warning("append-only triggers exist for SQLite and PostgreSQL only; %s relies on the API alone",
                        self.where)

    def _explain(self, exc: Exception) -> str:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        hint = ""
        low = reason.lower()
        if "readonly" in low or "read-only" in low or "unable to open" in low or "permission" in low:
            hint = " (is the data directory writable?)"
        elif "disk" in low and ("full" in low or "i/o" in low) or "no space" in low:
            hint = " (is the disk full?)"
        return f"feedback database {self.where} cannot be written: {reason}{hint}"

    def _write(self, fn):
        self.ensure_schema()
        try:
            with self.engine.begin() as conn:
                return fn(conn)
        except StoreError:
            raise
        except IntegrityError:
            raise
        except (SQLAlchemyError, OSError) as exc:
            msg = self._explain(exc)
            log.error("%s", msg)
            raise StoreError(msg) from exc

    def _read(self, fn):
        self.ensure_schema()
        try:
            with self.engine.connect() as conn:
                return fn(conn)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"feedback database {self.where} cannot be read: "
                             f"{str(getattr(exc, 'orig', None) or exc).splitlines()[0]}") from exc

    # -- writes -------------------------------------------------------------------------------
    def _ensure_conversation(self, conn, conv: ConversationRecord) -> None:
        exists = conn.execute(sa.select(conversations.c.id).where(conversations.c.id == conv.id)).first()
        if not exists:
            conn.execute(conversations.insert().values(created_at=utcnow(), **row(conv)))

    def record_conversation(self, conv: ConversationRecord) -> None:
        """Insert the conversation once (idempotent)."""
        try:
            self._write(lambda conn: self._ensure_conversation(conn, conv))
        except IntegrityError:
            pass  # inserted meanwhile by the same session

    def record_turn(self, conv: ConversationRecord, turn: TurnRecord) -> int:
        """Log one generated turn (every attempt, Regenerate included)."""
        def go(conn):
            self._ensure_conversation(conn, conv)
            return conn.execute(turns.insert().values(created_at=utcnow(), **row(turn))).inserted_primary_key[0]
        try:
            return self._write(go)
        except IntegrityError as exc:
            raise StoreError(f"turn {turn.turn} attempt {turn.attempt} of {turn.conversation_id} "
                             "exists already") from exc

    def record_vote(self, conv: ConversationRecord, vote: VoteRecord) -> int:
        """Insert a vote; returns its id. Raises AlreadyVoted for a second vote on a conversation.

        Retrying with the same ``vote_uid`` (e.g. after a lost acknowledgement) returns the id of
        the stored vote instead of storing it twice.
        """
        if vote.winner not in ("left", "right", "tie", "both_bad"):
            raise ValueError(f"winner must be left, right, tie or both_bad, not {vote.winner!r}")
        values = row(vote)

        def go(conn):
            self._ensure_conversation(conn, conv)
            return conn.execute(votes.insert().values(created_at=utcnow(), **values)).inserted_primary_key[0]
        try:
            return self._write(go)
        except IntegrityError as exc:
            same = self._read(lambda c: c.execute(sa.select(votes.c.id, votes.c.vote_uid)
                                                  .where(votes.c.conversation_id == vote.conversation_id)).first())
            if same is not None and same.vote_uid == vote.vote_uid:
                return same.id
            if same is not None:
                raise AlreadyVoted(f"conversation {vote.conversation_id} has a vote already") from exc
            raise StoreError(f"vote rejected by the database: {str(exc.orig).splitlines()[0]}") from exc

    def record_better_answer(self, conv: ConversationRecord, better: BetterAnswerRecord) -> int:
        def go(conn):
            self._ensure_conversation(conn, conv)
            return conn.execute(better_answers.insert().values(created_at=utcnow(), **row(better))
                                ).inserted_primary_key[0]
        try:
            return self._write(go)
        except IntegrityError as exc:
            raise StoreError(f"better answer rejected by the database: {str(exc.orig).splitlines()[0]}") from exc

    def void_vote(self, vote_id: int, reason: str, user: str | None = None) -> int:
        """Take vote ``vote_id`` out of the export, the leaderboard and training: a new ``vote_voids`` row.

        The vote stays in the database. Refused (:class:`VoidRefused`, with a message) when the vote does
        not exist, is voided already, or ``reason`` is empty. Returns the void's id.
        """
        reason = clean(str(reason or "")).strip()
        if not reason:
            raise VoidRefused(f"a void of vote {vote_id} needs a reason")
        if len(reason) > MAX_VOID_REASON_CHARS:
            raise VoidRefused(f"the reason is {len(reason)} characters; at most {MAX_VOID_REASON_CHARS}")
        try:
            vote_id = int(vote_id)
        except (TypeError, ValueError):
            raise VoidRefused(f"vote id must be a number, not {str(vote_id)[:40]!r}") from None

        def go(conn):
            if conn.execute(sa.select(votes.c.id).where(votes.c.id == vote_id)).first() is None:
                raise VoidRefused(f"there is no vote with id {vote_id}; nothing was voided")
            return conn.execute(vote_voids.insert().values(vote_id=vote_id, created_at=utcnow(), user=clean(user),
                                                           reason=reason, app_version=__version__)
                                ).inserted_primary_key[0]
        try:
            return self._write(go)
        except IntegrityError as exc:
            if self._read(lambda c: c.execute(sa.select(vote_voids.c.id).where(vote_voids.c.vote_id == vote_id))
                          .first()) is not None:
                raise VoidRefused(f"vote {vote_id} is voided already") from exc
            raise StoreError(f"void rejected by the database: {str(exc.orig).splitlines()[0]}") from exc

    # -- reads --------------------------------------------------------------------------------
    def votes(self, blind_only: bool = False, since_id: int = 0, user: str | None = None,
              include_voided: bool = False) -> list[dict]:
        """Stored votes in id order. Voided votes are left out unless ``include_voided`` (then each row has
        ``voided`` True/False)."""
        if include_voided:
            voided = sa.exists().where(vote_voids.c.vote_id == votes.c.id)
            q = sa.select(votes, voided.label("voided"))
        else:
            q = sa.select(votes).where(~sa.exists().where(vote_voids.c.vote_id == votes.c.id))
        q = q.where(votes.c.id > since_id).order_by(votes.c.id)
        if blind_only:
            q = q.where(votes.c.blind.is_(True))
        if user is not None:
            q = q.where(votes.c.user == user)
        rows = self._read(lambda c: [dict(r._mapping) for r in c.execute(q)])
        if include_voided:
            for r in rows:
                r["voided"] = bool(r["voided"])  # SQLite gives 0/1
        return rows

    def voids(self) -> list[dict]:
        """Every void, in id order."""
        return self._read(lambda c: [dict(r._mapping) for r in c.execute(sa.select(vote_voids).order_by(vote_voids.c.id))])

    def better_answers(self, since_id: int = 0) -> list[dict]:
        q = sa.select(better_answers).where(better_answers.c.id > since_id).order_by(better_answers.c.id)
        return self._read(lambda c: [dict(r._mapping) for r in c.execute(q)])

    def turns(self, conversation_id: str | None = None) -> list[dict]:
        q = sa.select(turns).order_by(turns.c.id)
        if conversation_id:
            q = q.where(turns.c.conversation_id == conversation_id)
        return self._read(lambda c: [dict(r._mapping) for r in c.execute(q)])

    def conversations(self) -> list[dict]:
        return self._read(lambda c: [dict(r._mapping) for r in c.execute(sa.select(conversations))])

    def count_votes(self, user: str | None = None, since: _dt.datetime | None = None) -> int:
        q = sa.select(sa.func.count()).select_from(votes)
        if user is not None:
            q = q.where(votes.c.user == user)
        if since is not None:
            q = q.where(votes.c.created_at >= since)
        return self._read(lambda c: c.execute(q).scalar())

    def stats(self, since_vote_id: int = 0, since_better_id: int = 0) -> dict:
        def go(c):
            def n(table, since):
                return c.execute(sa.select(sa.func.count()).select_from(table).where(table.c.id > since)).scalar()
            by_winner = dict(c.execute(sa.select(votes.c.winner, sa.func.count()).where(votes.c.id > since_vote_id)
                                       .group_by(votes.c.winner)).all())
            return {"votes": n(votes, since_vote_id), "better_answers": n(better_answers, since_better_id),
                    "blind_votes": c.execute(sa.select(sa.func.count()).select_from(votes).where(
                        votes.c.id > since_vote_id, votes.c.blind.is_(True))).scalar(),
                    "by_winner": by_winner,
                    "voids": n(vote_voids, 0),
                    "last_vote_id": c.execute(sa.select(sa.func.max(votes.c.id))).scalar() or 0,
                    "last_better_id": c.execute(sa.select(sa.func.max(better_answers.c.id))).scalar() or 0}
        return self._read(go)

    def schema_version(self) -> int:
        return self._read(lambda c: c.execute(sa.select(sa.func.max(schema_version_table.c.version))).scalar())

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` ("ok" when healthy); "n/a" on other databases."""
        if not self.is_sqlite:
            return "n/a"
        return self._read(lambda c: c.exec_driver_sql("PRAGMA integrity_check").scalar())

    def close(self) -> None:
        self.engine.dispose()
