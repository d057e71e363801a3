"""The arena's rules (pure logic, no Gradio): pairing, swap, rounds, votes, limits, inert text."""

import random
from collections import Counter

import pytest

from rlhf_demo.arena import (ALL, ArenaError, Limits, RateLimiter, Round, blind_swap, check_named_pair, clean_text,
                             inert_markdown, outcome, parse_policies_spec, resolve_pair, validate_comment,
                             validate_message, validate_reasons)

LIMITS = Limits(max_input_chars=50, max_turns=2, votes_per_hour=3)


def answered(rnd: Round, text="hi", left="L", right="R") -> Round:
    turn = rnd.ask(text, LIMITS)
    turn.left, turn.right, turn.complete = left, right, True
    return rnd


# -- messages -------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["", "   ", "\n\t \n", None, "\x00\x00"])
def test_empty_and_whitespace_messages_are_refused(text):
    with pytest.raises(ArenaError) as e:
        validate_message(text, LIMITS)
    assert e.value.key == "empty_message"


def test_oversize_message_is_refused_with_the_numbers():
    with pytest.raises(ArenaError) as e:
        validate_message("x" * 100_000, LIMITS)
    assert e.value.key == "too_long" and e.value.kwargs == {"n": 100_000, "limit": 50}


def test_nul_control_characters_and_lone_surrogates_are_removed():
    assert validate_message("  a\x00b\x07c\r\nd\ud800 ", LIMITS) == "abc\nd\ufffd"
    assert clean_text("tab\tok\n") == "tab\tok\n"


def test_reasons_and_comment_are_validated():
    assert validate_reasons(["safer", "more_helpful", "safer"]) == ["more_helpful", "safer"]
    with pytest.raises(ArenaError):
        validate_reasons(["<script>"])
    with pytest.raises(ArenaError):
        validate_comment("x" * 5000)
    assert validate_comment(" ok\x00 ") == "ok"


# -- inert rendering ------------------------------------------------------------------------
def test_html_becomes_literal_text():
    out = inert_markdown("hi <script>alert(1)</script> <img src=x onerror=alert(2)>")
    assert "<" not in out and "&lt;script>" in out and "&lt;img" in out


def test_markdown_images_become_links_but_code_is_untouched():
    out = inert_markdown("look ![x](http://evil.example/a.png) and \\![y](http://e/b.png)")
    assert "![" not in out and "http://evil.example/a.png" in out
    code = "```html\n<b>bold</b> ![i](u)\n```\nthen `<i>` and <u>"
    out = inert_markdown(code)
    assert "<b>bold</b> ![i](u)" in out and "`<i>`" in out and "&lt;u>" in out
    # an unclosed fence: the rest is code for Markdown too
    assert inert_markdown("```\n<x>") == "```\n<x>"


# -- pairing --------------------------------------------------------------------------------
def test_policies_spec_parsing_and_path_names_refused():
    assert parse_policies_spec(None) == ("sft", "newest")
    assert parse_policies_spec("sft,rlhf-v2") == ("sft", "rlhf-v2")
    assert parse_policies_spec("all") == ALL
    for bad in ("sft", "sft,../etc", "a,b,c", "sft,"):
        with pytest.raises(ArenaError):
            parse_policies_spec(bad)


def test_default_pair_is_sft_vs_newest_and_falls_back_to_sft():
    rng = random.Random(0)
    spec = parse_policies_spec(None)
    assert resolve_pair(spec, ["sft", "rlhf-v0", "rlhf-v1"], "rlhf-v1", rng) == ("sft", "rlhf-v1")
    assert resolve_pair(spec, ["sft"], None, rng) == ("sft", "sft")
    with pytest.raises(ArenaError):
        resolve_pair(("sft", "rlhf-v9"), ["sft"], None, rng)


def test_sampling_among_all_versions_gives_distinct_pairs_covering_all():
    rng = random.Random(1)
    seen = Counter()
    for _ in range(300):
        a, b = resolve_pair(ALL, ["sft", "rlhf-v0", "rlhf-v1"], "rlhf-v1", rng)
        assert a != b
        seen[a] += 1
        seen[b] += 1
    assert set(seen) == {"sft", "rlhf-v0", "rlhf-v1"} and min(seen.values()) > 150


def test_blind_swap_is_seeded_and_fair():
    def run(seed):
        rng = random.Random(seed)
        return [blind_swap(("sft", "rlhf-v1"), rng) for _ in range(2000)]
    a, b = run(7), run(7)
    assert a == b  # seeded: reproducible
    swapped = sum(s for _, _, s in a)
    assert 900 < swapped < 1100
    for left, right, s in a:
        assert (left, right) == (("rlhf-v1", "sft") if s else ("sft", "rlhf-v1"))


def test_named_pair_validation():
    avail = ["sft", "rlhf-v0"]
    assert check_named_pair("sft", "rlhf-v0", avail) == ("sft", "rlhf-v0")
    for left, right in (("../../etc/passwd", "sft"), ("sft", "rlhf-v7"), ("", "sft"), ("sft", None)):
        with pytest.raises(ArenaError):
            check_named_pair(left, right, avail)


# -- rounds ---------------------------------------------------------------------------------
def test_round_lifecycle_vote_is_final():
    rnd = Round()
    assert rnd.phase() == "idle"
    with pytest.raises(ArenaError) as e:
        rnd.check_vote("left")
    assert e.value.key == "nothing_to_vote"
    rnd.pair("sft", "rlhf-v1", swapped=False)
    turn = rnd.ask("hello", LIMITS)
    rnd.streaming = True
    assert rnd.phase() == "streaming"
    with pytest.raises(ArenaError):
        rnd.check_vote("left")  # no vote while streaming
    with pytest.raises(ArenaError):
        rnd.ask("again", LIMITS)
    rnd.streaming = False
    turn.left, turn.right, turn.complete = "a", "b", True
    assert rnd.phase() == "ready"
    with pytest.raises(ArenaError):
        rnd.check_vote("middle")
    rnd.check_vote("left")
    rnd.winner = "left"
    assert rnd.phase() == "voted"
    with pytest.raises(ArenaError) as e:
        rnd.check_vote("right")
    assert e.value.key == "already_voted"
    with pytest.raises(ArenaError) as e:
        rnd.ask("more", LIMITS)
    assert e.value.key == "round_over"
    with pytest.raises(ArenaError):
        rnd.regenerate()


def test_multi_turn_histories_are_per_side_and_max_turns_enforced():
    rnd = answered(Round(), "q1", "a1", "b1")
    rnd.ask("q2", LIMITS)
    assert rnd.prompt("left") == [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                                  {"role": "user", "content": "q2"}]
    assert rnd.prompt("right")[1]["content"] == "b1"
    rnd.turns[-1].left, rnd.turns[-1].right, rnd.turns[-1].complete = "a2", "b2", True
    with pytest.raises(ArenaError) as e:
        rnd.ask("q3", LIMITS)
    assert e.value.key == "max_turns"
    assert rnd.messages("right")[-1] == {"role": "assistant", "content": "b2"}


def test_regenerate_resets_the_last_turn_and_counts_attempts():
    rnd = answered(Round())
    rnd.better_turns.add(1)
    turn = rnd.regenerate()
    assert turn.attempt == 1 and turn.left == "" and not turn.complete and 1 not in rnd.better_turns
    with pytest.raises(ArenaError):
        rnd.regenerate()  # not complete yet


def test_better_answer_rules():
    rnd = Round()
    with pytest.raises(ArenaError):
        rnd.check_better_answer("x", LIMITS)
    answered(rnd)
    with pytest.raises(ArenaError) as e:
        rnd.check_better_answer("  ", LIMITS)
    assert e.value.key == "empty_better"
    assert rnd.check_better_answer(" better\x00 ", LIMITS) == "better"
    rnd.better_turns.add(1)
    with pytest.raises(ArenaError):
        rnd.check_better_answer("again", LIMITS)


def test_pairing_happens_once_per_round():
    rnd = Round()
    rnd.pair("sft", "rlhf-v1", True, {"sft": "base", "rlhf-v1": "abc"})
    assert (rnd.left_hash, rnd.right_hash, rnd.swapped) == ("base", "abc", True)
    with pytest.raises(ArenaError):
        rnd.pair("sft", "sft", False)


# -- limits ---------------------------------------------------------------------------------
def test_rate_limiter_sliding_window():
    now = [0.0]
    rl = RateLimiter(limit=3, window_s=3600, clock=lambda: now[0])
    for _ in range(3):
        rl.check("u")
        rl.hit("u")
    with pytest.raises(ArenaError) as e:
        rl.check("u")
    assert e.value.key == "rate_limited" and e.value.kwargs["limit"] == 3
    rl.check("someone-else")
    now[0] = 3601.0
    rl.check("u")
    assert rl.remaining("u") == 3


def test_outcome_semantics():
    assert [outcome(w) for w in ("left", "right", "tie", "both_bad")] == [1.0, 0.0, 0.5, 0.5]
