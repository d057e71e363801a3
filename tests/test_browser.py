"""A person's flow in a real browser: Playwright driving Debian's headless Chromium.

Type a prompt (with HTML, a script and outside images in it), see two answers, click "A is
better", see the names, start a new round. Nothing from the text runs or loads, and the page's
Content-Security-Policy blocks images from other hosts. Skips when /usr/bin/chromium is absent
(`.ci/run` installs it with apt-get).
"""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest

from conftest import CHROMIUM, browser_api
from test_app import launch, world  # noqa: F401  (the module fixture: tiny model + rlhf-v0)

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    sync_api = browser_api()  # skipped without Chromium/Playwright locally; a failure in CI (CI=true)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def outside_host():
    """A web server on another origin that records every request it gets."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()


@pytest.fixture(scope="module")
def arena(world):  # noqa: F811
    app, url = launch(world)
    yield app, url
    app.close()


def bot_texts(page, pane: str) -> list[str]:
    return page.locator(f"#{pane} [data-testid='bot']").all_inner_texts()


def test_a_person_votes_and_nothing_from_the_text_executes(browser, arena, outside_host, tmp_path):
    app, url = arena
    evil, hits = outside_host
    page = browser.new_page(viewport={"width": 1280, "height": 1000}, locale="en-US")
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector("#message textarea", timeout=30000)
    page.add_init_script("window.__pwned = undefined")
    prompt = (f"Hello <script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2\"> "
              f"<img src=\"{evil}/raw.png\"> ![pic]({evil}/markdown.png) **bold**")
    assert page.locator("#vote-left").is_disabled()
    page.fill("#message textarea", prompt)
    page.click("#send")
    page.wait_for_function("document.querySelectorAll('#chat-a [data-testid=bot]').length > 0 && "
                           "document.querySelectorAll('#chat-b [data-testid=bot]').length > 0", timeout=60000)
    page.wait_for_selector("#vote-left:not([disabled])", timeout=60000)
    assert bot_texts(page, "chat-a")[0].strip() and bot_texts(page, "chat-b")[0].strip()
    # the prompt is shown as text, in both panes
    user_msg = page.locator("#chat-a [data-testid='user']").first.inner_text()
    assert "<script>" in user_msg and "window.__pwned = 1" in user_msg
    assert page.locator("#chat-a [data-testid='user'] strong").count() == 1  # Markdown still works
    assert page.locator("#chat-a [data-testid='user'] img, #chat-b [data-testid='user'] img").count() == 0
    # blind: no names anywhere before the vote
    assert not page.locator("#reveal").is_visible()
    assert "rlhf-v0" not in page.inner_text("body")

    page.click("#vote-left")
    page.wait_for_selector("#reveal", state="visible", timeout=20000)
    reveal = page.inner_text("#reveal")
    assert "sft" in reveal and "rlhf-v0" in reveal
    page.wait_for_selector("#vote-left[disabled]", timeout=10000)
    assert page.locator("#vote-right").is_disabled() and page.locator("#send").is_disabled()
    page.screenshot(path=str(tmp_path / "arena-voted.png"), full_page=True)
    assert (tmp_path / "arena-voted.png").stat().st_size > 10_000

    # nothing ran, nothing was fetched from the outside host
    assert page.evaluate("window.__pwned") is None
    # the third layer: even an <img> that got into the page cannot load from another host
    page.evaluate(f"document.body.insertAdjacentHTML('beforeend', '<img id=probe src=\"{evil}/csp.png\">')")
    page.wait_for_timeout(500)
    assert hits == [], hits
    vote = app.store.votes()[-1]
    assert vote["winner"] == "left" and vote["left_messages"][0]["content"] == prompt

    page.click("#new-round")
    page.wait_for_function("document.querySelectorAll('#chat-a [data-testid=bot]').length === 0", timeout=20000)
    assert not page.locator("#reveal").is_visible()
    assert page.locator("#send").is_enabled() and page.locator("#vote-left").is_disabled()
    assert not errors, errors
    page.close()


def test_chinese_browser_gets_a_chinese_ui(browser, arena):
    _, url = arena
    page = browser.new_page(locale="zh-CN", extra_http_headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    page.goto(url)
    page.wait_for_selector("#vote-left", timeout=30000)
    page.wait_for_function("document.querySelector('#vote-left').innerText.includes('更好')", timeout=10000)
    assert "竞技场" in page.inner_text("body")
    page.fill("#message textarea", "   ")
    page.click("#send")
    page.wait_for_selector("text=请先输入消息", timeout=10000)  # the refusal, in Chinese
    page.close()


def test_login_required_and_training_tab_only_for_admins(browser, world, tmp_path):  # noqa: F811
    from arena_app.auth import UserDB, add_user
    from rlhf_demo.store import Store

    users = tmp_path / "users.json"
    add_user(users, "admin", "admin-password")
    add_user(users, "bob", "bob-password")
    app, url = launch(world, store=Store(f"sqlite:///{tmp_path / 'f.db'}"), users=UserDB(users), admins=["admin"])
    try:
        def login(name, password):
            page = browser.new_page(locale="en-US")
            page.goto(url)
            page.wait_for_selector("input[type=password]", timeout=30000)
            assert page.locator("#message").count() == 0  # the arena is not served before login
            page.locator("input[type=text]").first.fill(name)
            page.fill("input[type=password]", password)
            page.keyboard.press("Enter")
            return page

        bad = login("bob", "wrong-password")
        bad.wait_for_timeout(1500)
        assert bad.locator("#message").count() == 0
        bad.close()
        for name, admin in (("bob", False), ("admin", True)):
            page = login(name, f"{name}-password")
            page.wait_for_selector("#message textarea", timeout=30000)
            page.wait_for_function(f"(document.querySelector('#who')?.innerText || '').includes('{name}')",
                                   timeout=10000)
            from playwright.sync_api import expect

            # the tab's visibility follows the login on page load: wait for it (slow under load)
            expect(page.get_by_role("tab", name="Training")).to_have_count(1 if admin else 0, timeout=20000)
            expect(page.get_by_role("tab", name="Data review")).to_have_count(1 if admin else 0, timeout=20000)
            if admin:  # a logged-in admin voids bob's vote: the void record names the admin, the vote stays
                from rlhf_demo.store import ConversationRecord, VoteRecord

                conv = ConversationRecord(id="bob-1", left_policy="sft", right_policy="rlhf-v0", swapped=False,
                                          blind=True, user="bob")
                side = [{"role": "user", "content": "bob's question"}, {"role": "assistant", "content": "an answer"}]
                vid = app.store.record_vote(conv, VoteRecord(conversation_id="bob-1", turn=1, left_policy="sft",
                                                             right_policy="rlhf-v0", winner="left", user="bob",
                                                             left_messages=side, right_messages=side))
                page.get_by_role("tab", name="Data review").click(timeout=30000)
                page.click("#review-show")
                expect(page.locator("#review-table")).to_contain_text("bob's question", timeout=30000)
                page.fill("#void-id textarea, #void-id input", str(vid))
                page.fill("#void-reason textarea, #void-reason input", "a test vote")
                page.click("#void-submit")
                expect(page.locator("#void-msg")).to_contain_text(f"Vote {vid} voided", timeout=20000)
                assert [(x["vote_id"], x["user"]) for x in app.store.voids()] == [(vid, "admin")]
                assert [v["voided"] for v in app.store.votes(include_voided=True)] == [True]
            page.close()
    finally:
        app.close()


def test_admin_voids_a_vote_and_the_export_leaves_it_out(browser, arena):
    """The Data review tab: browse the votes, void one with a reason; the export drops it, the database keeps
    the vote and the void; an unknown id is refused with a message."""
    from playwright.sync_api import expect

    from rlhf_demo.export import export_pairs
    from rlhf_demo.store import ConversationRecord, VoteRecord

    app, url = arena

    def add(cid, prompt):
        conv = ConversationRecord(id=cid, left_policy="sft", right_policy="rlhf-v0", swapped=False, blind=True)
        side = lambda a: [{"role": "user", "content": prompt}, {"role": "assistant", "content": a}]  # noqa: E731
        return app.store.record_vote(conv, VoteRecord(conversation_id=cid, turn=1, left_policy="sft",
                                                      right_policy="rlhf-v0", winner="left",
                                                      left_messages=side("good answer"), right_messages=side("bad")))
    keep, spam = add("rev-keep", "a real question about bread"), add("rev-spam", "spam spam spam")
    assert any(p["prompt"][0]["content"] == "spam spam spam" for p in export_pairs(app.store).pairs)
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, locale="en-US")
    page.goto(url)
    page.get_by_role("tab", name="Data review").click(timeout=30000)
    page.click("#review-show")
    expect(page.locator("#review-table")).to_contain_text("spam spam spam", timeout=30000)
    expect(page.locator("#review-table")).to_contain_text("a real question about bread")
    page.fill("#void-id textarea, #void-id input", "99999")
    page.fill("#void-reason textarea, #void-reason input", "spam")
    page.click("#void-submit")
    expect(page.get_by_text("there is no vote with id 99999")).to_be_visible(timeout=20000)  # refused, with why
    page.fill("#void-id textarea, #void-id input", str(spam))
    page.fill("#void-reason textarea, #void-reason input", "the same text sent 40 times")
    page.click("#void-submit")
    expect(page.locator("#void-msg")).to_contain_text(f"Vote {spam} voided", timeout=20000)
    expect(page.locator("#review-table")).to_contain_text("the same text sent 40 times")
    page.close()
    prompts = [p["prompt"][0]["content"] for p in export_pairs(app.store).pairs]
    assert "spam spam spam" not in prompts and "a real question about bread" in prompts
    stored = {v["id"]: v["voided"] for v in app.store.votes(include_voided=True)}
    assert stored[spam] is True and stored[keep] is False  # the database still holds the vote ...
    assert [(x["vote_id"], x["reason"]) for x in app.store.voids()] == [(spam, "the same text sent 40 times")]


@pytest.mark.slow
def test_readme_screenshot_with_the_embedded_model(browser, embedded_settings, tmp_path):
    """docs/arena.png: a real answer of the embedded SFT model on screen.

    Regenerate with ``RLHF_ARENA_SCREENSHOT=docs/arena.png pytest -m slow tests/test_browser.py -k readme``.
    """
    import os
    import shutil

    from rlhf_demo.generation import PolicyServer
    from rlhf_demo.registry import Registry
    from rlhf_demo.store import Store
    from arena_app.ui import build_app
    from test_app import free_port

    embedded_settings.max_new_tokens = 90
    registry = Registry(embedded_settings.versions_dir)
    server = PolicyServer.from_settings(embedded_settings, registry)
    app = build_app(embedded_settings, server=server, store=Store.from_settings(embedded_settings),
                    registry=registry, seed=3)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 960}, locale="en-US")
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("#message textarea", timeout=30000)
        page.fill("#message textarea", "How do I make a good cup of tea?")
        page.click("#send")
        page.wait_for_selector("#vote-left:not([disabled])", timeout=300000)
        page.evaluate("document.querySelectorAll('[role=log]').forEach(e => e.scrollTop = 0); window.scrollTo(0, 0)")
        page.wait_for_timeout(500)
        shot = tmp_path / "arena.png"
        page.screenshot(path=str(shot))
        page.close()
    finally:
        app.close()
        server.close()
    assert shot.stat().st_size > 20_000
    target = os.environ.get("RLHF_ARENA_SCREENSHOT")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
