"""Hostile MODEL output in a real browser (Playwright + Debian's headless Chromium).

A scripted policy answers with ``<script>``, ``<img onerror>``, an ``<iframe>``, a ``<style>`` with
a remote background, a ``javascript:`` link and Markdown images pointing at outside hosts. Every
request the page makes is recorded: none may leave 127.0.0.1, nothing may execute, and the answer
must still be readable as text. (Hostile PROMPTS are covered by test_browser.py.)
"""

from __future__ import annotations

from urllib.parse import urlparse

import pytest

from conftest import browser_api
from test_browser import ARGS, CHROMIUM
from test_reliability_input import scripted_app

PWN = "window.__pwned"
EVIL_ANSWER = (
    "Sure! <script>window.__pwned = 'script'</script> "
    "<img src=x onerror=\"window.__pwned = 'img'\"> "
    "<svg onload=\"window.__pwned = 'svg'\"></svg> "
    "<iframe src=\"http://evil.example/frame\"></iframe> "
    "<style>body { background: url(http://evil.example/style.png) }</style> "
    "![tracker](http://evil.example/track.png) "
    "![relative](//evil.example/proto-relative.png) "
    "<img src=\"https://evil.example/raw.png\"> "
    "[click me](javascript:window.__pwned='link') "
    "<a href=\"http://evil.example\" onmouseover=\"window.__pwned='a'\">hover</a> "
    "**bold** and `<b>code</b>`"
)


@pytest.fixture(scope="module")
def browser():
    sync_api = browser_api()  # skipped without Chromium/Playwright locally; a failure in CI (CI=true)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


def test_html_script_and_outside_images_in_model_output_are_inert(browser, tmp_path):
    app, url = scripted_app(tmp_path, answer=lambda req: EVIL_ANSWER)
    page = browser.new_page(viewport={"width": 1280, "height": 1000}, locale="en-US")
    requests, errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))

    def only_local(route):  # recorded above; never let one out (the machine may be online)
        if urlparse(route.request.url).hostname in ("127.0.0.1", None):
            route.continue_()
        else:
            route.abort()

    page.route("**/*", only_local)
    try:
        page.goto(url)
        page.wait_for_selector("#message textarea", timeout=30000)
        page.fill("#message textarea", "Say something nasty ![p](http://evil.example/prompt.png) "
                                       "<img src=\"http://evil.example/prompt-raw.png\">")
        page.click("#send")
        page.wait_for_selector("#vote-left:not([disabled])", timeout=60000)
        page.wait_for_timeout(500)  # give any image, frame or handler the time to fire
        for pane in ("#chat-a", "#chat-b"):
            bot = page.locator(f"{pane} [data-testid='bot']").first
            text = bot.inner_text()
            assert "<script>window.__pwned = 'script'</script>" in text  # shown, as text
            assert "onerror" in text and "<iframe" in text and "<style>" in text
            assert "!\u200btracker" in text  # a Markdown image is shown as a plain link (fetched only if clicked)
            for tag in ("script", "img", "iframe", "svg", "style"):
                assert bot.locator(tag).count() == 0, f"a <{tag}> element from the answer is in the page"
            assert bot.locator("strong").count() == 1 and bot.locator("code").count() >= 1  # Markdown still works
            hrefs = bot.locator("a").evaluate_all("els => els.map(e => e.getAttribute('href') || '')")
            assert "http://evil.example/track.png" in hrefs
            assert not any(h.strip().lower().startswith("javascript:") for h in hrefs), hrefs
            bot.hover()
        assert page.evaluate(PWN) is None
        assert page.evaluate("getComputedStyle(document.body).backgroundImage") == "none"  # no <style> took effect
        page.click("#vote-left")
        page.wait_for_selector("#reveal", state="visible", timeout=20000)
        page.wait_for_timeout(300)
        outside = [u for u in requests if urlparse(u).hostname not in ("127.0.0.1",) and not u.startswith(("data:", "blob:"))]
        assert outside == [], outside
        assert not errors, errors
        assert app.store.votes()[-1]["left_messages"][-1]["content"] == EVIL_ANSWER  # stored verbatim
    finally:
        page.close()
        app.close()
