"""The feedback database's tables and the records written to them (used by :mod:`rlhf_demo.store`).

Append-only tables: ``conversations``, ``turns`` (every generated attempt), ``votes`` (one per round),
``better_answers`` and ``vote_voids`` (a void takes a vote out of export, leaderboard and training; the vote
stays). ``schema_version`` records each schema the database was brought to.

v3 adds nullable columns (an older database gains them on open, :data:`ADDED_COLUMNS`; old rows read NULL):
``conversations.pairing`` and ``votes.pairing`` — why the round got its pair (``{"reason": "spec" | "boost" |
"replay" | "named" | "sample", ...}``; a replay names ``replay_of``, the vote it replays); ``turns.prompt_source``
(``typed`` | ``example`` | ``suggested``) with ``turns.prompt_meta`` (category, language, pool reference of a
suggested prompt); ``votes.prompts`` — the same per turn, so a vote (and the export) tells suggested prompts apart.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import sqlalchemy as sa

from . import __version__

SCHEMA_VERSION = 3  # v2: vote_voids; v3: pairing + prompt source columns
APPEND_ONLY = ("conversations", "turns", "votes", "better_answers", "vote_voids")
PG_SCHEMA_LOCK = 7_243_918  # pg_advisory_xact_lock key: one process creates/migrates the schema at a time

metadata = sa.MetaData()

schema_version_table = sa.Table(
    "schema_version", metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", sa.DateTime, nullable=False),
    sa.Column("app_version", sa.String(64), nullable=False),
)

conversations = sa.Table(
    "conversations", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("user", sa.String(128)),
    sa.Column("session_id", sa.String(128)),
    sa.Column("left_policy", sa.String(64), nullable=False),
    sa.Column("left_hash", sa.String(64), nullable=False, default=""),
    sa.Column("right_policy", sa.String(64), nullable=False),
    sa.Column("right_hash", sa.String(64), nullable=False, default=""),
    sa.Column("swapped", sa.Boolean, nullable=False),
    sa.Column("blind", sa.Boolean, nullable=False),
    sa.Column("app_version", sa.String(64), nullable=False),
    sa.Column("pairing", sa.JSON, nullable=True),  # v3
)

turns = sa.Table(
    "turns", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("conversation_id", sa.String(64), sa.ForeignKey("conversations.id"), nullable=False, index=True),
    sa.Column("turn", sa.Integer, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("user_message", sa.Text, nullable=False),
    sa.Column("left_answer", sa.Text, nullable=False),
    sa.Column("right_answer", sa.Text, nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("latency", sa.JSON, nullable=False),
    sa.Column("finish", sa.JSON, nullable=False),
    sa.Column("prompt_source", sa.String(16), nullable=True),  # v3: typed | example | suggested
    sa.Column("prompt_meta", sa.JSON, nullable=True),  # v3: {"category", "lang", "ref"} of a pool prompt
    sa.UniqueConstraint("conversation_id", "turn", "attempt", name="uq_turn_attempt"),
)

votes = sa.Table(
    "votes", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("vote_uid", sa.String(64), nullable=False, unique=True),
    sa.Column("conversation_id", sa.String(64), sa.ForeignKey("conversations.id"), nullable=False,
              unique=True),  # one vote per round
    sa.Column("turn", sa.Integer, nullable=False),  # turns covered by the vote
    sa.Column("created_at", sa.DateTime, nullable=False, index=True),
    sa.Column("user", sa.String(128)),
    sa.Column("session_id", sa.String(128)),
    sa.Column("left_policy", sa.String(64), nullable=False),
    sa.Column("left_hash", sa.String(64), nullable=False),
    sa.Column("right_policy", sa.String(64), nullable=False),
    sa.Column("right_hash", sa.String(64), nullable=False),
    sa.Column("swapped", sa.Boolean, nullable=False),
    sa.Column("blind", sa.Boolean, nullable=False),
    sa.Column("winner", sa.String(16), nullable=False),
    sa.Column("left_messages", sa.JSON, nullable=False),
    sa.Column("right_messages", sa.JSON, nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("latency", sa.JSON, nullable=False),
    sa.Column("reasons", sa.JSON, nullable=False),
    sa.Column("comment", sa.Text, nullable=False),
    sa.Column("app_version", sa.String(64), nullable=False),
    sa.Column("pairing", sa.JSON, nullable=True),  # v3: as conversations.pairing
    sa.Column("prompts", sa.JSON, nullable=True),  # v3: [{"turn", "source", "category", "lang", "ref"}, ...]
    sa.CheckConstraint("winner IN ('left', 'right', 'tie', 'both_bad')", name="ck_winner"),
)

better_answers = sa.Table(
    "better_answers", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("conversation_id", sa.String(64), sa.ForeignKey("conversations.id"), nullable=False, index=True),
    sa.Column("turn", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("user", sa.String(128)),
    sa.Column("session_id", sa.String(128)),
    sa.Column("text", sa.Text, nullable=False),
    # each side's conversation through this turn, ending with that side's answer
    sa.Column("left_messages", sa.JSON, nullable=False),
    sa.Column("right_messages", sa.JSON, nullable=False),
    sa.Column("left_policy", sa.String(64), nullable=False),
    sa.Column("left_hash", sa.String(64), nullable=False),
    sa.Column("right_policy", sa.String(64), nullable=False),
    sa.Column("right_hash", sa.String(64), nullable=False),
    sa.Column("app_version", sa.String(64), nullable=False),
)

vote_voids = sa.Table(
    "vote_voids", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("vote_id", sa.Integer, sa.ForeignKey("votes.id"), nullable=False, unique=True),  # one void per vote
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("user", sa.String(128)),  # who voided it (an admin)
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("app_version", sa.String(64), nullable=False),
    sa.CheckConstraint("length(reason) > 0", name="ck_void_reason"),
)

MAX_VOID_REASON_CHARS = 2000
# columns added after v2 (nullable): an older database gains them with ALTER TABLE ADD COLUMN on open
ADDED_COLUMNS = {"conversations": ("pairing",), "turns": ("prompt_source", "prompt_meta"),
                 "votes": ("pairing", "prompts")}

_PG_APPEND_ONLY_FN = """
CREATE OR REPLACE FUNCTION arena_append_only() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION '%% is append-only', TG_TABLE_NAME;  -- %% (the driver's paramstyle) is one %
END
$fn$"""


@dataclass
class ConversationRecord:
    id: str
    left_policy: str
    right_policy: str
    swapped: bool
    blind: bool
    left_hash: str = ""
    right_hash: str = ""
    user: str | None = None
    session_id: str | None = None
    app_version: str = __version__
    pairing: dict | None = None


@dataclass
class TurnRecord:
    conversation_id: str
    turn: int
    user_message: str
    left_answer: str
    right_answer: str
    attempt: int = 0
    params: dict = field(default_factory=dict)
    latency: dict = field(default_factory=dict)
    finish: dict = field(default_factory=dict)
    prompt_source: str | None = None
    prompt_meta: dict | None = None


@dataclass
class VoteRecord:
    conversation_id: str
    turn: int
    left_policy: str
    right_policy: str
    winner: str
    left_messages: list
    right_messages: list
    swapped: bool = False
    blind: bool = True
    left_hash: str = ""
    right_hash: str = ""
    params: list | dict = field(default_factory=list)
    latency: list | dict = field(default_factory=list)
    reasons: list = field(default_factory=list)
    comment: str = ""
    user: str | None = None
    session_id: str | None = None
    app_version: str = __version__
    vote_uid: str = field(default_factory=lambda: uuid.uuid4().hex)
    pairing: dict | None = None
    prompts: list | None = None


@dataclass
class BetterAnswerRecord:
    conversation_id: str
    turn: int
    text: str
    left_messages: list
    right_messages: list
    left_policy: str
    right_policy: str
    left_hash: str = ""
    right_hash: str = ""
    user: str | None = None
    session_id: str | None = None
    app_version: str = __version__
