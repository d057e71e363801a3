"""The arena app launched for real and driven with gradio_client (tiny random model, 6 new tokens)."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from conftest import write_random_adapter  # noqa: E402
from rlhf_demo.config import Settings  # noqa: E402
from rlhf_demo.registry import Registry  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def publish_random(settings: Settings, registry: Registry, seed: int, name: str):
    src = write_random_adapter(settings, settings.data_dir / f"adapter-src-{seed}", seed)
    return registry.publish(src, {"kind": "policy", "parent": "sft", "note": "random test adapter"}, name=name)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    """One tiny base model with one RLHF version, shared by every app in this module."""
    from rlhf_demo.generation import PolicyServer

    data = tmp_path_factory.mktemp("arena")
    settings = Settings(data_dir=data, base_model=str(tiny_model_dir), device="cpu", dtype="float32",
                        max_new_tokens=6, max_input_chars=500, max_turns=3, votes_per_hour=1000)
    registry = Registry(settings.versions_dir, package_dir=None)
    publish_random(settings, registry, 1, "rlhf-v0")
    server = PolicyServer(*_load(settings), registry)
    yield settings, registry, server
    server.close()


def _load(settings):
    from rlhf_demo.base_model import load_base_model

    return load_base_model(settings)


def launch(world, store=None, **kw):
    from rlhf_demo.store import Store
    from arena_app.ui import build_app

    settings, registry, server = world
    store = store or Store.from_settings(settings)
    app = build_app(settings, server=server, store=store, registry=registry, seed=0, bootstrap_rounds=20, **kw)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return app, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def arena(world):
    app, url = launch(world)
    yield app, url
    app.close()


def client(url, **kw):
    from gradio_client import Client

    return Client(url, verbose=False, **kw)


def chats(outputs):
    """(chat_a, chat_b, status, reveal) from one output tuple of an arena event."""
    _msg, a, b, status, reveal = outputs[:5]
    return a, b, status, reveal


def content(message) -> str:
    """Gradio 6 passes message content as blocks: [{"type": "text", "text": …}]."""
    c = message["content"]
    if isinstance(c, list):
        return "".join(block.get("text", "") for block in c if isinstance(block, dict))
    return c


def texts(chat):
    return [content(m) for m in chat if m["role"] == "assistant"]


def reveal_text(reveal):
    if isinstance(reveal, dict):
        return reveal.get("value") or ""
    return reveal or ""


# -- the acceptance flow ---------------------------------------------------------------------
def test_stream_vote_reveal_and_every_field_stored(arena, monkeypatch):
    app, url = arena
    calls = []
    real_submit = app.server.submit
    monkeypatch.setattr(app.server, "submit", lambda reqs: calls.append([r.policy for r in reqs]) or real_submit(reqs))
    c = client(url)
    job = c.submit("Tell me a joke", api_name="/send")
    final = job.result(timeout=120)
    steps = job.outputs()
    # ONE batched generation for both panes
    assert len(calls) == 1 and sorted(calls[0]) == ["rlhf-v0", "sft"]
    # both panes streamed: several updates, both sides non-empty at the end
    assert len(steps) >= 3
    a, b, status, reveal = chats(final)
    assert texts(a)[0] and texts(b)[0] and content(a[0]) == "Tell me a joke"
    # names hidden before the vote
    for out in steps:
        assert "rlhf-v0" not in reveal_text(chats(out)[3]) and "rlhf-v0" not in str(chats(out)[2])
    assert c.view_api(print_info=False, return_format="dict")  # the API is documented
    voted = c.predict(["safer", "clearer"], "good one", api_name="/vote_left")
    a2, b2, status2, reveal2 = chats(voted)
    assert "rlhf-v0" in reveal_text(reveal2) and "sft" in reveal_text(reveal2)  # names shown after
    (row,) = [v for v in app.store.votes() if v["comment"] == "good one"]
    assert row["winner"] == "left" and row["turn"] == 1 and row["blind"] is True
    assert {row["left_policy"], row["right_policy"]} == {"sft", "rlhf-v0"}
    assert row["swapped"] == (row["left_policy"] == "rlhf-v0")
    hashes = {row["left_policy"]: row["left_hash"], row["right_policy"]: row["right_hash"]}
    assert hashes["sft"] == "base" and hashes["rlhf-v0"] == app.registry.get("rlhf-v0").content_hash != ""
    assert row["left_messages"][0] == {"role": "user", "content": "Tell me a joke"}
    assert row["left_messages"][1]["role"] == "assistant" and row["left_messages"][1]["content"].strip()
    assert row["params"][0]["left"]["max_new_tokens"] == 6 and "seed" in row["params"][0]["right"]
    assert row["latency"][0]["left"]["total_s"] > 0
    assert row["reasons"] == ["safer", "clearer"] and row["session_id"] and row["app_version"]
    assert row["user"] is None  # no --auth: anonymous, identified by the session id
    # a second vote on the same round is refused
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="votes are final|vote"):
        c.predict([], "", api_name="/vote_right")
    assert len([v for v in app.store.votes() if v["conversation_id"] == row["conversation_id"]]) == 1
    # a new round: fresh panes, names hidden again
    fresh = c.predict(api_name="/new_round")
    a3, b3, _, reveal3 = chats(fresh)
    assert a3 == [] and b3 == [] and "rlhf-v0" not in reveal_text(reveal3)


def test_multi_turn_regenerate_and_better_answer(arena):
    app, url = arena
    c = client(url)
    c.predict("First question", api_name="/send")
    out = c.predict("Second question", api_name="/send")
    a, b, _, _ = chats(out)
    assert [content(m) for m in a if m["role"] == "user"] == ["First question", "Second question"]
    c.predict(api_name="/regenerate")
    c.predict("A much better answer.", api_name="/better_answer")
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="already"):
        c.predict("Another one", api_name="/better_answer")
    c.predict([], "", api_name="/vote_both_bad")
    vote = app.store.votes()[-1]
    assert vote["winner"] == "both_bad" and vote["turn"] == 2 and vote["params"][1]["attempt"] == 1
    turns = app.store.turns(vote["conversation_id"])
    assert [(t["turn"], t["attempt"]) for t in turns] == [(1, 0), (2, 0), (2, 1)]
    (better,) = [x for x in app.store.better_answers() if x["conversation_id"] == vote["conversation_id"]]
    assert better["text"] == "A much better answer." and better["turn"] == 2
    assert len(better["left_messages"]) == 4 and better["left_messages"][-1]["role"] == "assistant"


def test_bad_input_is_refused_with_a_message(arena):
    from gradio_client.exceptions import AppError

    app, url = arena
    c = client(url)
    for bad, why in (("", "write a message"), ("   \n\t ", "write a message"), ("x" * 100_000, "limit is 500")):
        with pytest.raises(AppError, match=why):
            c.predict(bad, api_name="/send")
    with pytest.raises(AppError):  # not a registry version (refused by the dropdown, then by check_name)
        c.predict("hi", "named", "../../etc/passwd", "sft", api_name="/send")
    with pytest.raises(AppError, match="Ask something first"):
        c.predict([], "", api_name="/vote_left")
    # the turn limit (3)
    for k in range(3):
        c.predict(f"q{k}", api_name="/send")
    with pytest.raises(AppError, match="3 messages"):
        c.predict("one too many", api_name="/send")


def test_named_mode_shows_names_and_stores_unblind_votes(arena):
    app, url = arena
    c = client(url)
    out = c.predict("hello", "named", "rlhf-v0", "rlhf-v0", 0.0, 1.0, 4, 123, api_name="/send")
    assert "rlhf-v0" in reveal_text(chats(out)[3])
    c.predict([], "", api_name="/vote_tie")
    v = app.store.votes()[-1]
    assert v["blind"] is False and v["left_policy"] == v["right_policy"] == "rlhf-v0" and v["swapped"] is False
    assert v["params"][0]["left"]["seed"] == 123 and v["params"][0]["left"]["max_new_tokens"] == 4


def test_twenty_concurrent_users_every_vote_stored_once(arena):
    app, url = arena
    before = len(app.store.votes())
    errors, convs = [], []

    def user(k):
        try:
            c = client(url)
            c.predict(f"user {k} asks", api_name="/send")
            c.predict([], f"user {k}", api_name=f"/vote_{('left', 'right', 'tie')[k % 3]}")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=user, args=(k,)) for k in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors, errors[:3]
    votes = app.store.votes()[before:]
    assert sorted(v["comment"] for v in votes) == sorted(f"user {k}" for k in range(20))
    assert len({v["conversation_id"] for v in votes}) == 20


def test_leaderboard_and_evaluation_tabs(arena, tmp_path):
    app, url = arena
    c = client(url)
    c.predict("hi", api_name="/send")
    c.predict([], "", api_name="/vote_right")
    summary, ratings, rate, counts = c.predict(False, api_name="/leaderboard")
    assert "votes" in summary
    assert {row[1] for row in ratings["data"]} >= {"sft", "rlhf-v0"}
    md, gallery = c.predict(api_name="/evaluation")
    assert "python -m eval" in md
    run = app.settings.data_dir / "eval" / "20990101-000000"
    run.mkdir(parents=True)
    (run / "report.md").write_text("# Eval report\n\nrefusal rate <b>12%</b>\n\n![plot](plot.png)\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.plot([0, 1])
    plt.savefig(run / "plot.png")
    plt.close()
    md, gallery = c.predict(api_name="/evaluation")
    assert "Eval report" in md and "&lt;b>" in md and "![plot]" not in md
    items = gallery["value"] if isinstance(gallery, dict) else gallery
    assert len(items) == 1 and items[0]["image"].endswith("plot.png")


def test_hot_swap_new_version_is_offered_without_restart(arena, world):
    app, url = arena
    settings, registry, _ = world
    publish_random(settings, registry, 2, "rlhf-v1")
    c = client(url)
    c.predict("who are you?", api_name="/send")
    c.predict([], "hot swap", api_name="/vote_tie")
    v = app.store.votes()[-1]
    assert {v["left_policy"], v["right_policy"]} == {"sft", "rlhf-v1"}


def test_store_down_the_arena_keeps_serving(world, tmp_path):
    from gradio_client.exceptions import AppError

    from rlhf_demo.store import Store

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    app, url = launch(world, store=Store(f"sqlite:///{blocker / 'feedback.db'}"))
    try:
        c = client(url)
        out = c.predict("still answering?", api_name="/send")
        assert texts(chats(out)[0])
        with pytest.raises(AppError, match="cannot be saved right now"):
            c.predict([], "", api_name="/vote_left")
    finally:
        app.close()


def test_rate_limit(arena, monkeypatch):
    from gradio_client.exceptions import AppError

    from rlhf_demo.arena import RateLimiter

    app, url = arena
    monkeypatch.setattr(app, "limiter", RateLimiter(1))
    c = client(url)
    c.predict("one", api_name="/send")
    c.predict([], "", api_name="/vote_left")
    c.predict(api_name="/new_round")
    c.predict("two", api_name="/send")
    with pytest.raises(AppError, match="1 votes this hour"):
        c.predict([], "", api_name="/vote_left")


def test_with_auth_nothing_works_without_login_and_only_admins_export(world, tmp_path):
    from gradio_client.exceptions import AppError

    from arena_app.auth import UserDB, add_user

    users = tmp_path / "users.json"
    add_user(users, "admin", "admin-password")
    add_user(users, "bob", "bob-password")
    from rlhf_demo.store import Store

    app, url = launch(world, store=Store(f"sqlite:///{tmp_path / 'auth.db'}"), users=UserDB(users), admins=["admin"])
    try:
        import httpx

        with pytest.raises(Exception):
            client(url)  # the config and every endpoint need a session
        for path in ("config", "gradio_api/info", "gradio_api/queue/join"):
            r = httpx.request("POST" if path.endswith("join") else "GET", url + path, json={}, timeout=10)
            assert r.status_code in (401, 403), (path, r.status_code)
        with pytest.raises(Exception):
            client(url, auth=("bob", "wrong-password"))
        bob = client(url, auth=("bob", "bob-password"))
        bob.predict("hi", api_name="/send")
        bob.predict([], "", api_name="/vote_left")
        assert app.store.votes()[-1]["user"] == "bob"
        with pytest.raises(AppError, match="Only admins"):
            bob.predict(api_name="/export_trl")
        admin = client(url, auth=("admin", "admin-password"))
        file, msg = admin.predict(api_name="/export_trl")
        path = file["value"] if isinstance(file, dict) else file
        import re

        written = int(re.search(r"wrote (\d+) pairs", msg).group(1))
        assert written <= 1 and Path(path).read_text().count("\n") == written
    finally:
        app.close()


def test_generation_failure_leaves_the_round_usable(arena, monkeypatch):
    from gradio_client.exceptions import AppError

    from rlhf_demo.generation import GenerationError

    app, url = arena
    c = client(url)
    first = c.predict("first", api_name="/send")
    before = texts(chats(first)[0])
    real_submit = app.server.submit

    def broken(reqs):
        raise GenerationError("adapter rlhf-v0 is broken")

    monkeypatch.setattr(app.server, "submit", broken)
    with pytest.raises(AppError, match="could not answer"):
        c.predict("second", api_name="/send")
    with pytest.raises(AppError, match="could not answer"):
        c.predict(api_name="/regenerate")
    monkeypatch.setattr(app.server, "submit", real_submit)
    out = c.predict([], "", api_name="/vote_tie")  # the first turn is intact and can be voted on
    assert texts(chats(out)[0]) == before
    assert app.store.votes()[-1]["turn"] == 1


def test_controls_follow_the_round_phase(arena):
    from rlhf_demo.arena import Round

    app, _ = arena
    names = ["state", "msg", "chat_a", "chat_b", "status", "reveal", "v_left", "v_right", "v_tie", "v_bad", "send",
             "regen", "new", "better"]

    def view(rnd):
        return dict(zip(names, app._view(rnd, "en")))

    rnd = Round()
    v = view(rnd)
    assert not v["v_left"]["interactive"] and v["send"]["interactive"] and not v["regen"]["interactive"]
    rnd.pair("sft", "rlhf-v0", False)
    turn = rnd.ask("hi", app.limits)
    rnd.streaming = True
    v = view(rnd)  # while streaming: nothing can be clicked
    assert not any(v[k]["interactive"] for k in ("v_left", "v_right", "v_tie", "v_bad", "send", "regen", "new",
                                                  "better", "msg"))
    assert not v["reveal"]["visible"]
    rnd.streaming, turn.complete = False, True
    v = view(rnd)
    assert all(v[k]["interactive"] for k in ("v_left", "v_right", "v_tie", "v_bad", "send", "regen", "better"))
    rnd.winner = "tie"
    v = view(rnd)  # after the vote: only New round (and a better answer)
    assert not any(v[k]["interactive"] for k in ("v_left", "v_right", "v_tie", "v_bad", "send", "regen"))
    assert v["new"]["interactive"] and v["reveal"]["visible"] and "rlhf-v0" in v["reveal"]["value"]


def test_app_flags(tmp_path):
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)

    helped = run("--help")
    assert helped.returncode == 0
    for flag in ("--host", "--port", "--data-dir", "--base-model", "--auth", "--admin", "--policies", "--db-url",
                 "--seed", "--max-input-chars", "--votes-per-hour"):
        assert flag in helped.stdout
    assert "127.0.0.1" in helped.stdout and "7860" in helped.stdout
    bad = run("--admin", "alice", "--data-dir", str(tmp_path))
    assert bad.returncode == 2 and "--admin needs --auth" in bad.stderr
    bad = run("--policies", "sft,../../x", "--data-dir", str(tmp_path))
    assert bad.returncode == 2 and "invalid version name" in bad.stderr
    bad = run("--auth", str(tmp_path / "nope.json"), "--data-dir", str(tmp_path))
    assert bad.returncode == 2 and "no such file" in bad.stderr


def test_leaderboard_preliminary_length_controlled_position_bias_and_voids(arena):
    """Below MIN_BATTLES a version is 'preliminary' (no rank, no interval); the length-controlled column and the
    left-wins rate are shown; a voided vote leaves the leaderboard."""
    from rlhf_demo.leaderboard import MIN_BATTLES
    from rlhf_demo.store import ConversationRecord, VoteRecord

    app, url = arena

    def add(cid, left, right, winner, left_text="short", right_text="a much longer answer"):
        conv = ConversationRecord(id=cid, left_policy=left, right_policy=right, swapped=False, blind=True)
        msgs = lambda text: [{"role": "user", "content": "q"}, {"role": "assistant", "content": text}]  # noqa: E731
        return app.store.record_vote(conv, VoteRecord(conversation_id=cid, turn=1, left_policy=left, right_policy=right,
                                                      winner=winner, left_messages=msgs(left_text),
                                                      right_messages=msgs(right_text)))
    for k in range(MIN_BATTLES + 2):
        add(f"lb-{k}", "sft", "rlhf-v0", ("left", "right", "tie")[k % 3])
    lone = add("lb-lone", "sft", "rlhf-v7", "right")
    summary, ratings, _rate, _counts = client(url).predict(False, api_name="/leaderboard")
    rows = {r[1]: dict(zip(ratings["headers"], r)) for r in ratings["data"]}
    assert rows["rlhf-v7"]["95% CI"] == "preliminary" and rows["rlhf-v7"]["rank"] == "–"
    assert rows["sft"]["95% CI"] == "anchor" and rows["rlhf-v0"]["95% CI"].count("–") == 1
    assert "length-controlled" in ratings["headers"] and "(" in rows["rlhf-v0"]["length-controlled"]
    assert "Position bias" in summary and "preliminary" in summary
    app.store.void_vote(lone, "test: voided", user="admin")
    _s, ratings, _r, _c = client(url).predict(False, api_name="/leaderboard")
    assert "rlhf-v7" not in {r[1] for r in ratings["data"]}
    assert any(v["id"] == lone and v["voided"] for v in app.store.votes(include_voided=True))


def test_admin_agreement_view_matches_the_hand_computed_kappa(arena):
    """The seeded overlap set of tests/test_agreement.py (4 users x 8 pairs, sides swapped between users) stored
    as votes: Fleiss' kappa 9/73 = 0.12 and the contrarian user flagged, in the admin view."""
    from test_agreement import seeded_overlap_votes

    from rlhf_demo.store import ConversationRecord, VoteRecord

    app, url = arena
    for k, v in enumerate(x for x in seeded_overlap_votes() if not x.get("voided")):
        cid = f"agree-{k}"
        conv = ConversationRecord(id=cid, left_policy=v["left_policy"], right_policy=v["right_policy"],
                                  swapped=False, blind=True, user=v["user"])
        app.store.record_vote(conv, VoteRecord(conversation_id=cid, turn=1, left_policy=v["left_policy"],
                                               right_policy=v["right_policy"], winner=v["winner"],
                                               left_messages=v["left_messages"], right_messages=v["right_messages"],
                                               user=v["user"]))
    summary, table = client(url).predict(api_name="/agreement")
    assert "8 conversation pairs" in summary and "Fleiss' kappa 0.12 " in summary
    rows = {r[0]: dict(zip(table["headers"], r)) for r in table["data"]}
    assert rows["u4"]["flagged"] == "outlier" and rows["u1"]["flagged"] == ""
    assert rows["u4"]["Cohen's kappa (95% CI)"].startswith("-0.60 (-0.60 – -0.08)")
    assert rows["u1"]["agrees with the others"] == "100%" and rows["u4"]["agrees with the others"] == "0%"
