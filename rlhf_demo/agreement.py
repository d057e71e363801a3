"""Rater agreement on the overlap set: the same conversation pair voted on by several users.

An *overlap item* is one pair of conversations (each policy's messages) that more than one user voted on —
the arena replays a pair another user already voted on, possibly with the sides swapped. Votes are grouped
by :func:`overlap_key`, which does not depend on the side each policy was shown on, and each vote becomes a
label that does not either (:func:`vote_label`: the winning policy's name, ``tie`` or ``both_bad``).

:func:`agreement_report` gives

* Fleiss' kappa over all overlap items, with a bootstrap interval (:func:`rlhf_demo.stats.fleiss_kappa`);
* per user: Cohen's kappa of the user's labels against the other users' majority label on the items where
  that majority is unique (:func:`rlhf_demo.stats.cohen_kappa`, with its interval), the agreement rate with
  its Wilson interval, and a *flag* when the user agrees with the majority clearly less than the other users
  do: the upper end of the user's Wilson interval is below the pooled agreement rate of everyone else
  (a one-sided outlier test in the spirit of FastChat's, which compares a voter's agreement with the crowd
  against the crowd's). Users with fewer than ``min_items`` comparable items are never flagged.

Voided votes are left out. Pure functions on vote rows (``Store.votes()`` dicts).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter

from .stats import cohen_kappa, fleiss_kappa, wilson_interval

TIE_LABELS = ("tie", "both_bad")


def vote_label(vote: dict) -> str:
    """The vote in policy terms: the winning policy's name, or ``tie`` / ``both_bad``."""
    w = vote["winner"]
    if w in TIE_LABELS:
        return w
    if w not in ("left", "right"):
        raise ValueError(f"vote {vote.get('id')}: winner must be left, right, tie or both_bad, not {w!r}")
    return vote[f"{w}_policy"]


def overlap_key(vote: dict) -> str:
    """The same two conversations (policy + messages per side), whichever side each was shown on."""
    sides = sorted(json.dumps([vote[f"{s}_policy"], vote[f"{s}_messages"]], sort_keys=True, ensure_ascii=False)
                   for s in ("left", "right"))
    return hashlib.sha256("\x1e".join(sides).encode()).hexdigest()[:24]


def overlap_items(votes: list[dict]) -> dict[str, dict[str, str]]:
    """item key -> {user: label} for the items that two or more distinct users voted on (first vote per user)."""
    items: dict[str, dict[str, str]] = {}
    for v in votes:
        if v.get("voided") or not v.get("user"):
            continue
        items.setdefault(overlap_key(v), {}).setdefault(v["user"], vote_label(v))
    return {k: by_user for k, by_user in items.items() if len(by_user) >= 2}


def _majority(labels: list[str]) -> str | None:
    """The most common label, or None when it is not unique."""
    top = Counter(labels).most_common()
    if not top or (len(top) > 1 and top[0][1] == top[1][1]):
        return None
    return top[0][0]


def agreement_report(votes: list[dict], confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0,
                     min_items: int = 5) -> dict:
    """Fleiss' kappa overall and per-user agreement with the others (see the module docstring)."""
    items = overlap_items(votes)
    report = {"items": len(items), "votes": sum(len(x) for x in items.values()), "fleiss": None, "users": {}}
    if not items:
        return report
    report["fleiss"] = fleiss_kappa([list(x.values()) for x in items.values()], confidence, n_resamples, seed)
    pairs: dict[str, list[tuple[str, str]]] = {}  # user -> [(own label, others' majority)]
    for by_user in items.values():
        for user, label in by_user.items():
            major = _majority([lab for u, lab in by_user.items() if u != user])
            if major is not None:
                pairs.setdefault(user, []).append((label, major))
    totals = {u: (sum(a == b for a, b in ps), len(ps)) for u, ps in pairs.items()}
    for user, ps in sorted(pairs.items()):
        k, n = totals[user]
        lo, hi = wilson_interval(k, n, confidence)
        rest_k = sum(t[0] for u, t in totals.items() if u != user)
        rest_n = sum(t[1] for u, t in totals.items() if u != user)
        others = rest_k / rest_n if rest_n else None
        report["users"][user] = {
            "items": n, "agree": k, "rate": k / n, "ci": [lo, hi], "others_rate": others,
            "kappa": cohen_kappa([a for a, _ in ps], [b for _, b in ps], confidence),
            "flagged": bool(n >= min_items and others is not None and hi < others),
        }
    return report
