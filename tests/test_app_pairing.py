"""Prompt suggestions, the new-version boost and the overlap replay, through the launched app (gradio_client).

Issue #15 points 1, 2 and 4: a suggested or example prompt is marked in the store and the export; a newly published
version gets the rounds until it has enough votes, and every round's pairing is stored with its reason; a share of
rounds replays a pair another user voted on, and the agreement view sees the overlap.
"""

from __future__ import annotations

import json

import pytest

from test_app import client, content, launch, publish_random, world  # noqa: F401  (module fixture)


@pytest.fixture(scope="module")
def arena(world):  # noqa: F811
    app, url = launch(world)
    yield app, url
    app.close()


def test_a_suggested_prompt_sent_unedited_is_marked_suggested(arena, tmp_path):
    app, url = arena
    c = client(url)
    text = c.predict(api_name="/suggest_prompt")
    pool = app.prompt_pool
    assert pool.lookup("en", text) is not None  # drawn from the English pool
    c.predict(text, api_name="/send")
    c.predict([], "suggested", api_name="/vote_left")
    (v,) = [v for v in app.store.votes() if v["comment"] == "suggested"]
    p = pool.lookup("en", text)
    assert v["prompts"] == [{"turn": 1, "source": "suggested", "category": p.category, "lang": "en", "ref": p.ref}]
    assert v["pairing"]["reason"] == "spec"
    (turn,) = app.store.turns(v["conversation_id"])
    assert turn["prompt_source"] == "suggested" and turn["prompt_meta"]["category"] == p.category
    # edited: no longer the suggestion -> typed
    c.predict("blind", api_name="/new_round")
    text = c.predict(api_name="/suggest_prompt")
    c.predict(text + " Please be brief.", api_name="/send")
    c.predict([], "edited", api_name="/vote_right")
    (v,) = [v for v in app.store.votes() if v["comment"] == "edited"]
    assert v["prompts"][0]["source"] == "typed"
    # the export tells them apart
    from rlhf_demo.export import export_pairs

    res = export_pairs(app.store, "trl", tmp_path / "pairs.jsonl")
    metas = {r["meta"]["vote_id"]: r["meta"] for r in res.pairs if r["meta"]["from"] == "vote"}
    by_comment = {v["comment"]: v["id"] for v in app.store.votes()}
    for comment, suggested in (("suggested", True), ("edited", False)):
        if by_comment[comment] in metas:  # a pair with identical answers is skipped by the export
            assert metas[by_comment[comment]]["suggested"] is suggested


def test_clicking_an_example_sends_it_and_marks_it(arena):
    app, url = arena
    c = client(url)
    example = app.examples("en")[1]
    out = c.predict(api_name="/example_1")
    assert content(out[1][0]) == example.text  # the example is the round's first message
    c.predict([], "example", api_name="/vote_tie")
    (v,) = [v for v in app.store.votes() if v["comment"] == "example"]
    assert v["left_messages"][0]["content"] == example.text
    assert v["prompts"][0]["source"] == "example" and v["prompts"][0]["category"] == example.category


def test_chinese_pages_get_chinese_suggestions(arena):
    app, url = arena
    c = client(url, headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    text = c.predict(api_name="/suggest_prompt")
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text) and app.prompt_pool.lookup("zh", text)
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in e.text) for e in app.examples("zh"))


def test_overlap_replay_serves_another_users_pair_and_agreement_sees_it(world, tmp_path):  # noqa: F811
    from gradio_client.exceptions import AppError

    from arena_app.auth import UserDB, add_user
    from rlhf_demo.agreement import agreement_report
    from rlhf_demo.store import Store

    users = tmp_path / "users.json"
    for name in ("alice", "bob"):
        add_user(users, name, f"{name}-password")
    app, url = launch(world, store=Store(f"sqlite:///{tmp_path / 'overlap.db'}"), users=UserDB(users),
                      overlap_share=1.0)
    try:
        alice = client(url, auth=("alice", "alice-password"))
        alice.predict("What is 2+2?", api_name="/send")
        alice.predict([], "", api_name="/vote_left")
        (first,) = app.store.votes()
        assert alice.predict("blind", api_name="/new_round")[1] == []  # nothing of another user's to replay yet
        bob = client(url, auth=("bob", "bob-password"))
        out = bob.predict("blind", api_name="/new_round")  # the replay: alice's conversation, answers included
        assert [content(m) for m in out[1]][0] == "What is 2+2?" and len(out[1]) == 2
        with pytest.raises(AppError, match="another person voted on"):
            bob.predict("and 3+3?", api_name="/send")  # vote only
        bob.predict([], "", api_name="/vote_left")
        second = app.store.votes()[-1]
        assert second["user"] == "bob" and second["pairing"] == {"reason": "replay", "replay_of": first["id"]}
        assert app.store.turns(second["conversation_id"]) == []  # nothing was generated again
        rep = agreement_report(app.store.votes(), n_resamples=0)
        assert rep["items"] == 1 and rep["votes"] == 2
        # bob voted on it now: no second replay of the same pair for him
        assert bob.predict("blind", api_name="/new_round")[1] == []
    finally:
        app.close()


def test_a_new_version_gets_the_boost_until_it_has_enough_votes(world, tmp_path):  # noqa: F811
    from rlhf_demo.pairing import Boost
    from rlhf_demo.store import Store

    settings, registry, _ = world
    app, url = launch(world, store=Store(f"sqlite:///{tmp_path / 'boost.db'}"), policies="sft,rlhf-v0",
                      boost=Boost(min_votes=2, share=1.0))
    try:
        publish_random(settings, registry, 7, "rlhf-v9")  # published while the app runs
        c = client(url)
        pairs = []
        for k in range(5):
            c.predict("blind", api_name="/new_round")
            c.predict(f"question {k}", api_name="/send")
            c.predict([], "", api_name="/vote_left")
            v = app.store.votes()[-1]
            pairs.append(({v["left_policy"], v["right_policy"]}, v["pairing"]))
        # the version with fewest battles (the newest on a tie) gets each round: rlhf-v9 is boosted into the rounds
        # until it has 2 votes; rlhf-v0 (young too) is in the spec's pair anyway
        boost = {"reason": "boost", "version": "rlhf-v9", "min_votes": 2}
        assert pairs[0] == ({"sft", "rlhf-v9"}, {**boost, "battles": 0})
        assert pairs[1][0] == {"sft", "rlhf-v0"} and pairs[1][1]["reason"] == "spec"  # v0: 0 battles, in the pair
        assert pairs[2] == ({"sft", "rlhf-v9"}, {**boost, "battles": 1})
        assert pairs[3][0] == {"sft", "rlhf-v0"} and pairs[3][1]["reason"] == "spec"
        assert pairs[4] == ({"sft", "rlhf-v0"}, {"reason": "spec"})  # both have enough votes: no boost left
        assert sum("rlhf-v9" in p[0] for p in pairs) == 2  # without the boost: never (the spec is sft,rlhf-v0)
        stored = {c["id"]: c["pairing"] for c in app.store.conversations()}
        assert all(stored[v["conversation_id"]] == v["pairing"] for v in app.store.votes())
        assert json.dumps(stored)  # plain JSON in the store
    finally:
        app.close()


def test_app_flags_for_the_pool_the_boost_and_the_overlap(tmp_path):
    """`python app.py --prompt-pool FILE` with a broken row stops with the file and line; bad shares are refused."""
    import subprocess
    import sys

    from test_app import ROOT

    def run(*args):
        return subprocess.run([sys.executable, "app.py", "--data-dir", str(tmp_path), *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    helped = run("--help")
    for flag in ("--prompt-pool", "--boost-votes", "--boost-share", "--overlap-share"):
        assert flag in helped.stdout
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"prompt": "Hello there", "category": "ordinary"}\n{"prompt": "x", "category": "nice"}\n')
    bad = run("--prompt-pool", str(pool))
    assert bad.returncode == 2 and f"{pool}:2: field 'category' must be one of" in bad.stderr, bad.stderr
    assert run("--overlap-share", "1.5").returncode == 2
    assert "share in [0, 1]" in run("--boost-share", "-0.1").stderr
