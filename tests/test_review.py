"""Data review without Gradio: filters over stored votes and the rows an admin reads (rlhf_demo/review.py)."""

import datetime as dt

import pytest

from rlhf_demo.review import filter_votes, parse_day, review_rows


def v(i, left="sft", right="rlhf-v1", winner="left", user="alice", day=1, reasons=(), voided=False, **kw):
    msgs = lambda a: [{"role": "user", "content": f"prompt {i}"}, {"role": "assistant", "content": a}]  # noqa: E731
    return {"id": i, "left_policy": left, "right_policy": right, "winner": winner, "user": user,
            "created_at": dt.datetime(2026, 11, day, 12, 30), "reasons": list(reasons), "comment": "",
            "left_messages": msgs(f"left {i}"), "right_messages": msgs(f"right {i}"), "voided": voided, **kw}


VOTES = [v(1), v(2, winner="right", user="bob", day=2, reasons=["safer"]), v(3, left="rlhf-v2", winner="tie", day=3),
         v(4, winner="both_bad", user="bob", day=3, voided=True), v(5, left="rlhf-v1", right="sft", winner="left", day=4,
                                                                   category="harmful")]


def ids(rows):
    return [r["id"] for r in rows]


def test_each_filter():
    assert ids(filter_votes(VOTES)) == [1, 2, 3, 4, 5]
    assert ids(filter_votes(VOTES, version="rlhf-v2")) == [3]
    assert ids(filter_votes(VOTES, winner="right")) == [2]  # display terms
    assert ids(filter_votes(VOTES, winner="rlhf-v1")) == [2, 5]  # the version won, whichever side it was on
    assert ids(filter_votes(VOTES, winner="sft")) == [1]
    assert ids(filter_votes(VOTES, reason="safer")) == [2]
    assert ids(filter_votes(VOTES, user="bob")) == [2, 4]
    assert ids(filter_votes(VOTES, since="2026-11-02", until="2026-11-03")) == [2, 3, 4]
    assert ids(filter_votes(VOTES, status="voided")) == [4] and ids(filter_votes(VOTES, status="active")) == [1, 2, 3, 5]
    assert ids(filter_votes(VOTES, flagged_users=["bob"], flagged_only=True)) == [2, 4]
    assert ids(filter_votes(VOTES, category="harmful")) == [5]
    assert ids(filter_votes(VOTES, user="bob", status="active", since="2026-11-02")) == [2]


def test_bad_filters_say_which_value():
    with pytest.raises(ValueError, match="since must be a date like 2026-11-29, not 'yesterday'"):
        filter_votes(VOTES, since="yesterday")
    with pytest.raises(ValueError, match="after until"):
        filter_votes(VOTES, since="2026-11-05", until="2026-11-01")
    with pytest.raises(ValueError, match="status must be one of all, active, voided"):
        filter_votes(VOTES, status="deleted")
    assert parse_day(" ", "since") is None


def test_rows_newest_first_with_the_void_reason():
    rows = review_rows(VOTES, voids=[{"vote_id": 4, "reason": "spam"}], width=8)
    assert ids(rows) == [5, 4, 3, 2, 1]
    five, four = rows[0], rows[1]
    assert five["winner"] == "left (rlhf-v1)" and four["winner"] == "both_bad" and four["voided"] == "spam"
    assert five["prompt"] == "prompt 5" and five["left answer"] == "left 5" and five["when"] == "2026-11-04 12:30"
    assert review_rows([v(9, comment="a long comment here")], width=8)[0]["comment"] == "a long …"


def test_category_filter_reads_the_stored_pool_category():
    """Stored votes carry a pool prompt's category in ``prompts`` (per turn); a typed prompt is 'uncategorised'."""
    stored = [v(6, prompts=[{"turn": 1, "source": "suggested", "category": "risky-safe"}]),
              v(7, prompts=[{"turn": 1, "source": "typed"}]), v(8, prompts=None)]
    assert ids(filter_votes(stored, category="risky-safe")) == [6]
    assert ids(filter_votes(stored, category="uncategorised")) == [7, 8]
    assert ids(filter_votes(VOTES + stored, category="harmful")) == [5]
