"""Pairing that serves training: the new-version boost and the overlap replay (pure; the UI calls these).

* **Boost** (FastChat boosts new models): while a published version has few votes, a share of blind rounds plays
  it, so a new version gets enough votes to be ranked soon (:func:`choose_pair`).
* **Overlap replay**: a share of new blind rounds shows a conversation pair another user already voted on (with
  the stored answers, sides re-drawn), so rater agreement can be measured (:mod:`rlhf_demo.agreement`);
  :func:`replay_candidates` picks what may be replayed, :meth:`rlhf_demo.arena.Round.replay` builds the round.

Every round's pairing is logged with its reason (``conversations.pairing``/``votes.pairing`` in the store).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass

from .arena import ALL, resolve_pair
from .registry import SFT


PAIR_REASONS = ("spec", "sample", "boost", "named", "replay")


@dataclass(frozen=True)
class Boost:
    """FastChat-style boost of new versions: while a published version has fewer than ``min_votes`` votes against a
    different version (voided ones not counted), a ``share`` of blind rounds plays it (against the spec's first
    policy, SFT by default; with ``all``, against a random other version). ``share=0`` turns it off."""

    min_votes: int = 30
    share: float = 0.5

    def __post_init__(self):
        if self.min_votes < 0 or not 0.0 <= self.share <= 1.0:
            raise ValueError(f"boost: min_votes must be >= 0 and share in [0, 1], got {self.min_votes}, {self.share}")


def battles_per_version(votes) -> Counter:
    """Votes each version took part in against a *different* version (voided votes left out)."""
    n: Counter = Counter()
    for v in votes:
        if v.get("voided") or v["left_policy"] == v["right_policy"]:
            continue
        n[v["left_policy"]] += 1
        n[v["right_policy"]] += 1
    return n


def choose_pair(spec, available: list[str], newest: str | None, rng: random.Random,
                battles: Counter | dict | None = None, boost: Boost | None = None) -> tuple[tuple[str, str], dict]:
    """((first, second), pairing): the pair of a new blind round and why it was chosen, for the log.

    ``pairing["reason"]``: ``spec`` (the --policies pair), ``sample`` (``all``: two at random) or ``boost`` (a
    version below ``boost.min_votes`` battles got the round; ``version``, ``battles``, ``min_votes`` say which and
    why). Among several versions below the minimum the one with fewest battles is boosted (the newest on a tie;
    ``available`` lists versions oldest first).
    """
    pair = resolve_pair(spec, available, newest, rng)
    pairing = {"reason": "sample" if spec == ALL else "spec"}
    if boost is None or boost.share <= 0 or battles is None:
        return pair, pairing
    young = [v for v in available if v != SFT and battles.get(v, 0) < boost.min_votes]
    if not young or rng.random() >= boost.share:
        return pair, pairing
    order = {v: i for i, v in enumerate(available)}
    target = min(young, key=lambda v: (battles.get(v, 0), -order[v]))
    detail = {"version": target, "battles": int(battles.get(target, 0)), "min_votes": boost.min_votes}
    if target in pair and pair[0] != pair[1]:
        return pair, {**pairing, "boost_target_in_pair": True, **detail}
    if spec == ALL:
        others = [v for v in available if v != target]
        opponent = rng.choice(others) if others else target
    else:
        opponent = pair[0] if pair[0] != target else pair[1]
    return (opponent, target), {"reason": "boost", **detail}


def replay_candidates(votes, user: str | None, available: list[str]) -> list[dict]:
    """Votes a user may be shown again (the overlap set): blind, not voided, cast by *another* signed-in user, on
    versions still served, with well-formed messages, and on a conversation pair this user has not voted on yet.
    Items with the fewest raters come first (so more items reach two raters)."""
    from .agreement import overlap_key

    if not user:
        return []
    raters: dict[str, set] = defaultdict(set)
    first: dict[str, dict] = {}
    for v in votes:
        if v.get("voided") or not v.get("blind", True) or not v.get("user"):
            continue
        if v["left_policy"] not in available or v["right_policy"] not in available:
            continue
        if replay_turns(v) is None:
            continue
        k = overlap_key(v)
        raters[k].add(v["user"])
        first.setdefault(k, v)
    fresh = [k for k in first if user not in raters[k]]
    if not fresh:
        return []
    least = min(len(raters[k]) for k in fresh)
    return [first[k] for k in fresh if len(raters[k]) == least]


def replay_turns(vote: dict) -> list[tuple[str, str, str]] | None:
    """[(user message, left answer, right answer)] of a stored vote, or None when its messages are not a
    plain alternation of the same user messages with one answer each."""
    lm, rm = vote.get("left_messages") or [], vote.get("right_messages") or []
    if not lm or len(lm) != len(rm) or len(lm) % 2:
        return None
    out = []
    for i in range(0, len(lm), 2):
        u, a, b = lm[i], lm[i + 1], rm[i + 1]
        if (u.get("role") != "user" or rm[i].get("role") != "user" or u.get("content") != rm[i].get("content")
                or a.get("role") != "assistant" or b.get("role") != "assistant"):
            return None
        out.append((u.get("content") or "", a.get("content") or "", b.get("content") or ""))
    return out
