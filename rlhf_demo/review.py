"""Data review for admins, without Gradio: filter stored votes and turn them into rows to read.

:func:`filter_votes` keeps the votes (``Store.votes(include_voided=True)`` rows) that match every given filter:
version (either side), winner in policy terms or display terms, reason, user, a date range, status (active /
voided) and "flagged" (cast by a user the agreement report flags as an outlier). :func:`review_rows` gives one
short row per vote (prompt and both answers cut to ``width`` characters, the void's reason when voided).
Bad filter values raise :class:`ValueError` with a message that says which value and why.
"""

from __future__ import annotations

import datetime as _dt

from .leaderboard import UNCATEGORISED, vote_category

STATUSES = ("all", "active", "voided")


def parse_day(text: str | None, what: str) -> _dt.date | None:
    """``YYYY-MM-DD`` → date; empty → None; anything else → ValueError naming ``what``."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return _dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{what} must be a date like 2026-11-29, not {text[:40]!r}") from None


def filter_votes(votes: list[dict], version: str | None = None, winner: str | None = None,
                 reason: str | None = None, user: str | None = None, since: str | None = None,
                 until: str | None = None, status: str = "all", flagged_users=(), flagged_only: bool = False,
                 category: str | None = None) -> list[dict]:
    """The votes matching every filter given (empty/None filters match everything).

    ``winner``: ``left``/``right``/``tie``/``both_bad`` (as displayed) or a version name (that version won).
    ``since``/``until``: days, inclusive. ``status``: all, active or voided. ``category``: the prompt kind
    (:func:`rlhf_demo.leaderboard.vote_category`: a pool prompt's category; ``uncategorised`` for a typed one)."""
    status = status or "all"
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    first, last = parse_day(since, "since"), parse_day(until, "until")
    if first and last and first > last:
        raise ValueError(f"since ({first}) is after until ({last})")
    flagged = set(flagged_users or ())
    out = []
    for v in votes:
        if version and version not in (v["left_policy"], v["right_policy"]):
            continue
        if winner and winner != v["winner"] and not (
                v["winner"] in ("left", "right") and v[f"{v['winner']}_policy"] == winner):
            continue
        if reason and reason not in (v.get("reasons") or []):
            continue
        if user and v.get("user") != user:
            continue
        day = v["created_at"].date() if v.get("created_at") is not None else None
        if (first and (day is None or day < first)) or (last and (day is None or day > last)):
            continue
        if (status == "active" and v.get("voided")) or (status == "voided" and not v.get("voided")):
            continue
        if flagged_only and v.get("user") not in flagged:
            continue
        if category and (vote_category(v) or UNCATEGORISED) != category:
            continue
        out.append(v)
    return out


def _cut(text, width: int) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= width else text[:width - 1] + "…"


def _last_answer(messages) -> str:
    for m in reversed(messages or []):
        if m.get("role") == "assistant":
            return m.get("content") or ""
    return ""


def review_rows(votes: list[dict], voids: list[dict] = (), width: int = 120) -> list[dict]:
    """One row per vote, newest first: id, when, user, the two versions, the winner (display and policy terms),
    reasons, comment, the first prompt and both last answers (cut to ``width``), and the void's reason."""
    void_reason = {x["vote_id"]: x["reason"] for x in voids}
    rows = []
    for v in sorted(votes, key=lambda v: -v["id"]):
        won = v[f"{v['winner']}_policy"] if v["winner"] in ("left", "right") else v["winner"]
        first = next((m.get("content") for m in v.get("left_messages") or [] if m.get("role") == "user"), "")
        rows.append({"id": v["id"], "when": v["created_at"].strftime("%Y-%m-%d %H:%M") if v.get("created_at") else "",
                     "user": v.get("user") or "", "left": v["left_policy"], "right": v["right_policy"],
                     "winner": f"{v['winner']} ({won})" if won != v["winner"] else v["winner"],
                     "reasons": ", ".join(v.get("reasons") or []), "comment": _cut(v.get("comment"), width),
                     "prompt": _cut(first, width), "left answer": _cut(_last_answer(v.get("left_messages")), width),
                     "right answer": _cut(_last_answer(v.get("right_messages")), width),
                     "voided": void_reason.get(v["id"], "yes" if v.get("voided") else "")})
    return rows
