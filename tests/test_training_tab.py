"""The arena's Training tab, driven with gradio_client against a real app and a real pipeline subprocess."""

from __future__ import annotations

import json
import os
import time

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from test_app import chats, client, free_port, texts  # noqa: E402
from test_pipeline import seed_votes, tiny_args  # noqa: E402

from rlhf_demo.registry import Registry  # noqa: E402


def launch(settings, extra_args, **kw):
    from rlhf_demo.generation import PolicyServer
    from rlhf_demo.store import Store
    from arena_app.training_tab import TrainingTab
    from arena_app.ui import build_app

    registry = Registry(settings.versions_dir, package_dir=None)
    server = PolicyServer.from_settings(settings, registry)
    app = build_app(settings, server=server, store=Store.from_settings(settings), registry=registry, seed=0,
                    bootstrap_rounds=10, training_ui=TrainingTab.factory(extra_args, grace_s=20), **kw)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return app, f"http://127.0.0.1:{port}/"


def status_text(out) -> str:
    s = out[1]
    return s.get("value", "") if isinstance(s, dict) else (s or "")


def wait_for(c, cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    out = None
    while time.monotonic() < deadline:
        out = c.predict(api_name="/train_status")
        if cond(out):
            return out
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}; last status: {status_text(out)!r}\nlog:\n{out[2] if out else ''}")


@pytest.mark.slow
def test_cancel_leaves_no_partial_version_and_the_app_keeps_serving(tiny_settings, tmp_path):
    settings = tiny_settings
    seed_votes(settings, 6)
    # a long PPO run, so the cancel lands in the middle of training
    args = tiny_args(settings, tmp_path) + ["--ppo-iterations", "500", "--ppo-eval-every", "1"]
    app, url = launch(settings, args)
    try:
        c = client(url)
        out = c.predict(api_name="/train_status")
        feedback = out[0].get("value", "") if isinstance(out[0], dict) else out[0]
        assert "6 votes" in feedback and "No pipeline run yet" in feedback
        out = c.predict(api_name="/train_start")
        tab = app.training_tab
        assert tab.running() and tab.proc is not None
        from gradio_client.exceptions import AppError

        with pytest.raises(AppError, match="already in progress"):
            c.predict(api_name="/train_start")  # one run at a time
        wait_for(c, lambda o: "PPO iteration" in status_text(o), 120, "PPO to start")
        pid = tab.proc.pid
        out = c.predict(api_name="/train_cancel")
        tab.proc.wait(timeout=30)
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # the whole process group is gone
        out = wait_for(c, lambda o: "cancelled" in status_text(o), 10, "the cancelled state")
        run_dir = tab.run_dir
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["outcome"] == "cancelled" and summary["published"] is None
        reg = Registry(settings.versions_dir, package_dir=None)
        assert reg.names("policy") == ["sft"] and not reg.problems
        assert not list(settings.versions_dir.glob(".tmp-*"))
        assert "cancelled" in (run_dir / "pipeline.log").read_text()
        # the arena keeps serving, and the lock is free for the next run
        sent = c.predict("still there?", api_name="/send")
        assert texts(chats(sent)[0])
        assert not tab.running()
    finally:
        if app.training_tab.proc is not None and app.training_tab.proc.poll() is None:
            os.killpg(app.training_tab.proc.pid, 9)
        app.close()


def test_training_tab_is_admin_only(tiny_settings):
    from gradio_client.exceptions import AppError

    app, url = launch(tiny_settings, [], local_admin=False)
    try:
        c = client(url)
        for api in ("/train_start", "/train_status", "/train_cancel"):
            with pytest.raises(AppError):
                c.predict(api_name=api)
        assert app.training_tab.proc is None
    finally:
        app.close()


@pytest.mark.slow
def test_end_to_end_votes_pipeline_new_version_served_without_restart(tiny_settings, tmp_path):
    """Seeded votes in a fresh database → pipeline from the Training tab → published → served next round."""
    settings = tiny_settings
    seed_votes(settings, 8)
    app, url = launch(settings, tiny_args(settings, tmp_path))
    try:
        c = client(url)
        first = c.predict("before training", api_name="/send")
        c.predict([], "", api_name="/vote_tie")
        assert {app.store.votes()[-1]["left_policy"], app.store.votes()[-1]["right_policy"]} == {"sft"}
        c.predict(api_name="/train_start")
        out = wait_for(c, lambda o: "Published" in status_text(o) or "rejected" in status_text(o)
                       or "failed" in status_text(o), 300, "the pipeline to finish")
        assert "Published **`rlhf-v0`**" in status_text(out), out[2]
        assert Registry(settings.versions_dir, package_dir=None).names("policy") == ["sft", "rlhf-v0"]
        # the same running app offers it at the next round (blind pair sft,newest)
        c.predict(api_name="/new_round")
        sent = c.predict("after training", api_name="/send")
        a, b, _, _ = chats(sent)
        assert texts(a) and texts(b)
        c.predict([], "", api_name="/vote_left")
        v = app.store.votes()[-1]
        assert {v["left_policy"], v["right_policy"]} == {"sft", "rlhf-v0"}
        assert first is not None
    finally:
        app.close()
