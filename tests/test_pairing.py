"""The new-version boost and the overlap replay (rlhf_demo/pairing.py), by hand."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from rlhf_demo.agreement import agreement_report, overlap_key
from rlhf_demo.arena import ArenaError, Limits, Round, parse_policies_spec
from rlhf_demo.pairing import Boost, battles_per_version, choose_pair, replay_candidates, replay_turns

AVAILABLE = ["sft", "rlhf-v0", "rlhf-v1"]  # oldest first


def v(vid, user, left="sft", right="rlhf-v0", winner="left", q="hi", a="A", b="B", **kw):
    return {"id": vid, "user": user, "left_policy": left, "right_policy": right, "winner": winner, "blind": True,
            "left_messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
            "right_messages": [{"role": "user", "content": q}, {"role": "assistant", "content": b}], **kw}


def test_battles_count_only_votes_between_different_versions():
    votes = [v(1, "a"), v(2, "a", right="rlhf-v1"), v(3, "a", left="sft", right="sft"), v(4, "b", voided=True)]
    assert battles_per_version(votes) == Counter({"sft": 2, "rlhf-v0": 1, "rlhf-v1": 1})


def test_a_new_version_gets_the_boost_until_it_has_enough_votes():
    spec = parse_policies_spec("sft,rlhf-v0")
    boost = Boost(min_votes=5, share=1.0)
    pair, why = choose_pair(spec, AVAILABLE, "rlhf-v1", random.Random(0), {"sft": 30, "rlhf-v0": 30}, boost)
    assert pair == ("sft", "rlhf-v1")
    assert why == {"reason": "boost", "version": "rlhf-v1", "battles": 0, "min_votes": 5}
    # enough votes: the spec's pair again, reason "spec"
    pair, why = choose_pair(spec, AVAILABLE, "rlhf-v1", random.Random(0), {"rlhf-v0": 30, "rlhf-v1": 5}, boost)
    assert (pair, why) == (("sft", "rlhf-v0"), {"reason": "spec"})
    # the one with fewest battles is boosted; on a tie, the newest
    _, why = choose_pair(spec, AVAILABLE, "rlhf-v1", random.Random(0), {"rlhf-v0": 2, "rlhf-v1": 4}, boost)
    assert why["version"] == "rlhf-v0" and why["reason"] == "spec" and why["boost_target_in_pair"]
    _, why = choose_pair(spec, AVAILABLE, "rlhf-v1", random.Random(0), {}, boost)
    assert why["version"] == "rlhf-v1"


def test_boost_share_is_the_share_of_rounds():
    spec = parse_policies_spec("sft,rlhf-v0")
    rng = random.Random(1)
    reasons = Counter(choose_pair(spec, AVAILABLE, "rlhf-v1", rng, {"rlhf-v0": 99}, Boost(10, 0.3))[1]["reason"]
                      for _ in range(2000))
    assert abs(reasons["boost"] / 2000 - 0.3) < 0.04
    assert choose_pair(spec, AVAILABLE, None, rng, {}, Boost(10, 0.0))[1] == {"reason": "spec"}
    with pytest.raises(ValueError):
        Boost(10, 1.5)


def test_all_spec_boosts_against_another_version():
    rng, reasons = random.Random(3), Counter()
    for _ in range(50):  # every round plays the young version; when the draw missed it, that is the boost's doing
        pair, why = choose_pair("all", AVAILABLE, "rlhf-v1", rng, {"sft": 50, "rlhf-v0": 50}, Boost(5, 1.0))
        assert "rlhf-v1" in pair and len(set(pair)) == 2
        reasons[why["reason"]] += 1
        if why["reason"] == "boost":
            assert pair[1] == "rlhf-v1"
    assert reasons["boost"] > 10 and reasons["sample"] > 10
    assert choose_pair("all", AVAILABLE, None, random.Random(3))[1] == {"reason": "sample"}


def test_replay_candidates_are_other_users_unseen_pairs_fewest_raters_first():
    votes = [v(1, "alice", a="x"), v(2, "bob", a="x", winner="right"),  # item x: alice + bob
             v(3, "alice", a="y"),  # item y: alice only
             v(4, "carol", a="z", voided=True),  # voided: never replayed
             v(5, "bob", a="w", blind=False),  # named mode: not in the overlap set
             v(6, "bob", a="gone", right="rlhf-old")]  # a version no longer served
    assert [c["id"] for c in replay_candidates(votes, "dave", AVAILABLE)] == [3]  # y has one rater, x two
    assert [c["id"] for c in replay_candidates(votes, "bob", AVAILABLE)] == [3]  # bob voted on x already
    assert replay_candidates(votes, "alice", AVAILABLE) == []  # nothing alice has not voted on
    assert replay_candidates(votes, None, AVAILABLE) == []  # anonymous users cannot be told apart


def test_a_replayed_round_lands_on_the_same_overlap_item_and_is_vote_only():
    orig = v(7, "alice", q="2+2?", a="4", b="5")
    for seed in range(6):  # either side order
        rnd = Round.replay(orig, random.Random(seed))
        assert rnd.replay_of == 7 and rnd.pairing == {"reason": "replay", "replay_of": 7} and rnd.phase() == "ready"
        rnd.check_vote("left")
        again = {"left_policy": rnd.left, "right_policy": rnd.right, "left_messages": rnd.messages("left"),
                 "right_messages": rnd.messages("right")}
        assert overlap_key(again) == overlap_key(orig)
        with pytest.raises(ArenaError, match="replay_vote_only"):
            rnd.ask("more", Limits())
        with pytest.raises(ArenaError, match="replay_vote_only"):
            rnd.regenerate()
    # two users on the replayed item: agreement sees it
    rnd = Round.replay(orig, random.Random(0))
    winner = "left" if rnd.left == "sft" else "right"  # bob agrees with alice (sft won)
    bob = {"id": 8, "user": "bob", "winner": winner, "left_policy": rnd.left, "right_policy": rnd.right,
           "left_messages": rnd.messages("left"), "right_messages": rnd.messages("right")}
    assert agreement_report([orig, bob], n_resamples=0)["items"] == 1


def test_malformed_messages_are_not_replayed():
    bad = v(9, "alice")
    bad["right_messages"] = bad["right_messages"][:1]
    assert replay_turns(bad) is None and replay_candidates([bad], "bob", AVAILABLE) == []
    with pytest.raises(ValueError, match="cannot be replayed"):
        Round.replay(bad, random.Random(0))
