"""The arena's rules, without Gradio: pairing, the blind side swap, rounds, votes, limits, and how
text is made inert before a browser renders it.

Vocabulary. A *round* is one conversation between a user and two policies shown side by side:
"left" is the pane labelled Model A, "right" is Model B. The pairing picks a (first, second)
pair (by default SFT vs the newest RLHF version); in a blind round a seeded coin decides whether
the pair is shown swapped (first on the right). Winners are recorded in display terms
(``left``/``right``/``tie``/``both_bad``) together with the policy shown on each side and the
swapped flag, so nothing has to be un-swapped later. A vote covers the whole conversation so far
and ends the round; after it only "New round" continues.
"""

from __future__ import annotations

import random
import re
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field

from .registry import SFT, RegistryError, check_name

WINNERS = ("left", "right", "tie", "both_bad")
# reason chips offered next to the vote (stored as these keys; the UI translates them)
REASONS = ("more_helpful", "more_accurate", "safer", "refused_rightly", "refused_wrongly", "clearer", "shorter")
MAX_COMMENT_CHARS = 2000
NEWEST = "newest"  # in a pairing spec: the newest RLHF version at the time the round starts
ALL = "all"  # a pairing spec that samples two versions among all the registry's policies


class ArenaError(ValueError):
    """A request the arena refuses. ``key`` names the message (see i18n.py); ``args`` fill it."""

    def __init__(self, key: str, **kwargs):
        self.key = key
        self.kwargs = kwargs
        super().__init__(f"{key} {kwargs}" if kwargs else key)


@dataclass(frozen=True)
class Limits:
    max_input_chars: int = 2000
    max_turns: int = 8
    votes_per_hour: int = 200

    @classmethod
    def from_settings(cls, settings) -> "Limits":
        return cls(settings.max_input_chars, settings.max_turns, settings.votes_per_hour)


# ---------------------------------------------------------------------------------------------
# text
# ---------------------------------------------------------------------------------------------
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def clean_text(text) -> str:
    """Drop NUL and other control characters (not tab/newline) and lone surrogates; normalise CRLF."""
    text = "" if text is None else str(text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _SURROGATE.sub("\ufffd", _CONTROL.sub("", text))


def validate_message(text, limits: Limits) -> str:
    """The user's message, cleaned; ArenaError("empty_message"/"too_long") when it cannot be sent."""
    text = clean_text(text)
    if not text.strip():
        raise ArenaError("empty_message")
    if len(text) > limits.max_input_chars:
        raise ArenaError("too_long", n=len(text), limit=limits.max_input_chars)
    return text.strip()


def validate_comment(text) -> str:
    text = clean_text(text).strip()
    if len(text) > MAX_COMMENT_CHARS:
        raise ArenaError("comment_too_long", limit=MAX_COMMENT_CHARS)
    return text


def validate_reasons(reasons) -> list[str]:
    reasons = list(reasons or [])
    unknown = [r for r in reasons if r not in REASONS]
    if unknown:
        raise ArenaError("bad_reason", reason=", ".join(map(str, unknown)))
    return sorted(set(reasons), key=REASONS.index)


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(?<![`\\])(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", re.S)


def _inert_prose(text: str) -> str:
    # Raw HTML becomes literal text (the browser shows "<script>", nothing runs or loads), and
    # Markdown images become plain links (not fetched until someone clicks them).
    return text.replace("<", "&lt;").replace("![", "!\u200b[")


def inert_markdown(text: str) -> str:
    """Markdown safe to hand to a browser renderer: no HTML element and no image from the text.

    Code (fenced blocks and inline spans) is left alone — Markdown shows code literally. Everything
    else has ``<`` written as ``&lt;`` and ``![`` broken by a zero-width space. This is one of three layers: Gradio's
    Chatbot also sanitizes HTML, and the page sets a Content-Security-Policy that refuses images
    from other hosts.
    """
    text = clean_text(text)
    out, prose, fence = [], [], None
    for line in text.split("\n"):
        m = _FENCE.match(line)
        if fence is None:
            if m:
                fence = m.group(1)[0] * len(m.group(1))
                out.append(_inert_spans("\n".join(prose)) if prose else None)
                prose = []
                out.append(line)
            else:
                prose.append(line)
        else:
            out.append(line)
            if m and m.group(1).startswith(fence) and not line.strip()[len(m.group(1)):].strip():
                fence = None
    if prose:
        out.append(_inert_spans("\n".join(prose)))
    return "\n".join(x for x in out if x is not None)


def _inert_spans(text: str) -> str:
    parts, last = [], 0
    for m in _CODE_SPAN.finditer(text):
        parts.append(_inert_prose(text[last:m.start()]))
        parts.append(m.group(0))
        last = m.end()
    parts.append(_inert_prose(text[last:]))
    return "".join(parts)


# ---------------------------------------------------------------------------------------------
# pairing
# ---------------------------------------------------------------------------------------------
def parse_policies_spec(spec: str | None) -> tuple[str, str] | str:
    """``"sft,newest"`` (default), ``"A,B"`` (two version names) or ``"all"`` (sample)."""
    spec = (spec or f"{SFT},{NEWEST}").strip()
    if spec == ALL:
        return ALL
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) != 2 or not all(parts):
        raise ArenaError("bad_policies", spec=spec)
    for p in parts:
        if p != NEWEST:
            try:
                check_name(p)
            except RegistryError as exc:
                raise ArenaError("bad_policy_name", name=p, why=str(exc)) from exc
    return parts[0], parts[1]


def resolve_pair(spec, available: list[str], newest: str | None, rng: random.Random) -> tuple[str, str]:
    """The (first, second) policies of a new round.

    ``newest`` stands for the newest RLHF version; with none published yet it falls back to SFT
    (SFT against itself still collects useful votes on sampling noise). ``all`` samples two
    distinct versions uniformly (one version only: it plays itself).
    """
    if spec == ALL:
        if len(available) < 2:
            return (available[0], available[0]) if available else (SFT, SFT)
        a, b = rng.sample(available, 2)
        return a, b
    pair = []
    for name in spec:
        if name == NEWEST:
            name = newest or SFT
        if name not in available:
            raise ArenaError("unknown_policy", name=name, known=", ".join(available))
        pair.append(name)
    return pair[0], pair[1]


def blind_swap(pair: tuple[str, str], rng: random.Random) -> tuple[str, str, bool]:
    """(left, right, swapped): a fair coin decides whether the pair is shown in reverse."""
    swapped = rng.random() < 0.5
    return (pair[1], pair[0], True) if swapped else (pair[0], pair[1], False)


def check_named_pair(left: str, right: str, available: list[str]) -> tuple[str, str]:
    """Validate the two versions a user picked in Named mode."""
    for name in (left, right):
        if not name:
            raise ArenaError("pick_two")
        try:
            check_name(name)
        except RegistryError as exc:
            raise ArenaError("bad_policy_name", name=str(name)[:80], why=str(exc)) from exc
        if name not in available:
            raise ArenaError("unknown_policy", name=name, known=", ".join(available))
    return left, right


# ---------------------------------------------------------------------------------------------
# rounds
# ---------------------------------------------------------------------------------------------
@dataclass
class Turn:
    user: str
    left: str = ""
    right: str = ""
    attempt: int = 0  # 0 = first answer; +1 per Regenerate
    params: dict = field(default_factory=dict)
    latency: dict = field(default_factory=dict)  # {"left": {"first_token_s", "total_s"}, "right": …}
    finish: dict = field(default_factory=dict)
    complete: bool = False
    source: str = "typed"  # typed | example | suggested (from the prompt pool; rlhf_demo.prompt_pool)
    prompt_meta: dict | None = None  # a pool prompt's {"category", "lang", "ref"}


@dataclass
class Round:
    """One conversation with two policies. Mutable; lives in the user's session."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    blind: bool = True
    left: str | None = None
    right: str | None = None
    left_hash: str = ""
    right_hash: str = ""
    swapped: bool = False
    turns: list[Turn] = field(default_factory=list)
    streaming: bool = False
    winner: str | None = None
    better_turns: set = field(default_factory=set)  # turn numbers (1-based) with a saved better answer
    pairing: dict = field(default_factory=dict)  # why this pair: {"reason": spec|sample|boost|named|replay, …}
    replay_of: int | None = None  # the stored vote this round replays (the overlap set): vote only, no chat

    @classmethod
    def replay(cls, vote: dict, rng: random.Random, hashes: dict | None = None) -> "Round":
        """A blind round showing another user's voted conversation again, sides re-drawn by a fair coin; the
        policies' answers are the stored ones, so the new vote lands on the same overlap item."""
        from .pairing import replay_turns

        turns = replay_turns(vote)
        if turns is None:
            raise ValueError(f"vote {vote.get('id')} cannot be replayed (its messages are not well-formed)")
        first, second = vote["left_policy"], vote["right_policy"]
        swapped = rng.random() < 0.5
        rnd = cls(blind=True, replay_of=int(vote["id"]),
                  pairing={"reason": "replay", "replay_of": int(vote["id"])})
        rnd.pair(second if swapped else first, first if swapped else second, swapped, hashes or
                 {vote["left_policy"]: vote.get("left_hash", ""), vote["right_policy"]: vote.get("right_hash", "")})
        for user_msg, a, b in turns:
            left, right = (b, a) if swapped else (a, b)
            rnd.turns.append(Turn(user=user_msg, left=left, right=right, complete=True))
        return rnd

    # -- queries ----------------------------------------------------------------------------
    @property
    def paired(self) -> bool:
        return self.left is not None

    @property
    def voted(self) -> bool:
        return self.winner is not None

    @property
    def n_turns(self) -> int:
        return len(self.turns)

    def phase(self) -> str:
        """idle (nothing asked yet), streaming, ready (answers in; vote possible), voted."""
        if self.voted:
            return "voted"
        if self.streaming:
            return "streaming"
        if self.turns and self.turns[-1].complete:
            return "ready"
        return "idle"

    def messages(self, side: str, upto: int | None = None) -> list[dict]:
        """The conversation as one side saw it (its own earlier answers), through turn ``upto``."""
        msgs = []
        for t in self.turns[:upto]:
            msgs.append({"role": "user", "content": t.user})
            answer = t.left if side == "left" else t.right
            if t.complete or answer:
                msgs.append({"role": "assistant", "content": answer})
        return msgs

    def prompt(self, side: str) -> list[dict]:
        """What to send to a policy for the newest turn: history + the newest user message."""
        msgs = self.messages(side, upto=len(self.turns) - 1)
        return msgs + [{"role": "user", "content": self.turns[-1].user}]

    def names(self) -> dict:
        return {"left": self.left, "right": self.right}

    def prompt_sources(self) -> list[dict]:
        """Per turn: where its prompt came from (stored with the vote: suggested prompts can be told apart)."""
        return [{"turn": i, "source": t.source, **(t.prompt_meta or {})} for i, t in enumerate(self.turns, 1)]

    # -- transitions ------------------------------------------------------------------------
    def pair(self, left: str, right: str, swapped: bool, hashes: dict | None = None) -> None:
        if self.paired:
            raise ArenaError("already_paired")
        self.left, self.right, self.swapped = left, right, swapped
        hashes = hashes or {}
        self.left_hash, self.right_hash = hashes.get(left, ""), hashes.get(right, "")

    def ask(self, text: str, limits: Limits) -> Turn:
        """Start a new turn with a validated user message."""
        if self.voted:
            raise ArenaError("round_over")
        if self.replay_of is not None:
            raise ArenaError("replay_vote_only")
        if self.streaming:
            raise ArenaError("busy")
        if self.turns and not self.turns[-1].complete:
            raise ArenaError("busy")
        if len(self.turns) >= limits.max_turns:
            raise ArenaError("max_turns", limit=limits.max_turns)
        text = validate_message(text, limits)
        turn = Turn(user=text)
        self.turns.append(turn)
        return turn

    def regenerate(self) -> Turn:
        """Reset the newest turn's answers for a new attempt."""
        if self.voted:
            raise ArenaError("round_over")
        if self.replay_of is not None:
            raise ArenaError("replay_vote_only")
        if self.streaming or not self.turns or not self.turns[-1].complete:
            raise ArenaError("nothing_to_regenerate")
        t = self.turns[-1]
        t.left = t.right = ""
        t.latency, t.finish, t.complete = {}, {}, False
        t.attempt += 1
        self.better_turns.discard(len(self.turns))
        return t

    def check_vote(self, winner: str) -> None:
        """Raise ArenaError unless a vote with ``winner`` may be cast now."""
        if winner not in WINNERS:
            raise ArenaError("bad_winner", winner=str(winner)[:40])
        if self.voted:
            raise ArenaError("already_voted")
        if self.streaming:
            raise ArenaError("busy")
        if not self.turns or not self.turns[-1].complete:
            raise ArenaError("nothing_to_vote")

    def check_better_answer(self, text, limits: Limits) -> str:
        if self.streaming or not self.turns or not self.turns[-1].complete:
            raise ArenaError("nothing_to_improve")
        if len(self.turns) in self.better_turns:
            raise ArenaError("better_already_saved")
        text = clean_text(text).strip()
        if not text:
            raise ArenaError("empty_better")
        if len(text) > max(limits.max_input_chars, 8000):
            raise ArenaError("too_long", n=len(text), limit=max(limits.max_input_chars, 8000))
        return text


# ---------------------------------------------------------------------------------------------
# rate limiting
# ---------------------------------------------------------------------------------------------
class RateLimiter:
    """At most ``limit`` events per ``window_s`` per key (sliding window, in memory, thread-safe).

    The window restarts with the process; the database keeps every vote regardless.
    """

    def __init__(self, limit: int, window_s: float = 3600.0, clock=time.monotonic):
        self.limit, self.window_s, self.clock = limit, window_s, clock
        self._events: dict[str, deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def _trim(self, q: deque, now: float) -> None:
        while q and q[0] <= now - self.window_s:
            q.popleft()

    def check(self, key: str) -> None:
        """Raise ArenaError("rate_limited") if ``key`` used up its allowance (does not count)."""
        with self._lock:
            q = self._events[key]
            now = self.clock()
            self._trim(q, now)
            if self.limit >= 0 and len(q) >= self.limit:
                wait_min = max(1, int((q[0] + self.window_s - now) // 60) + 1)
                raise ArenaError("rate_limited", limit=self.limit, minutes=wait_min)

    def hit(self, key: str) -> None:
        with self._lock:
            q = self._events[key]
            self._trim(q, self.clock())
            q.append(self.clock())

    def remaining(self, key: str) -> int:
        with self._lock:
            q = self._events[key]
            self._trim(q, self.clock())
            return max(0, self.limit - len(q))


def outcome(winner: str) -> float | None:
    """Score of the left side: 1 win, 0 loss, 0.5 tie or both bad."""
    return {"left": 1.0, "right": 0.0, "tie": 0.5, "both_bad": 0.5}[winner]
