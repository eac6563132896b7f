"""The built-in chat page in headless Chromium: with the API key typed in, a message sent from the page streams a
reply into the conversation, and that reply is exactly what the API returns for the same greedy request."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.serve.test_server import ServerProcess

CHROMIUM = Path("/usr/bin/chromium")
KEY = "page-key"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"missing dependency: {CHROMIUM} is absent (Debian package 'chromium')")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.mark.slow
def test_page_streams_a_reply(browser, tiny_dir):
    server = ServerProcess(tiny_dir, "--api-key", KEY, "--model-name", "tiny", "--context", "256")
    try:
        page = browser.new_page()
        chunks: list[str] = []
        page.on("response", lambda r: chunks.append(r.headers.get("content-type", ""))
                if r.url.endswith("/v1/chat/completions") else None)
        page.goto(server.url + "/")
        page.fill("#key", KEY)
        page.fill("#temperature", "0")
        page.fill("#max-tokens", "12")
        page.fill("#input", "Bonjour, comment ça va ?")
        page.evaluate("""() => { window.updates = 0; new MutationObserver((records) => {
            window.updates += records.length; }).observe(document.getElementById("log"),
            {subtree: true, childList: true, characterData: true}); }""")
        page.click("#send")
        page.wait_for_selector(".assistant[data-state=done]", timeout=60_000)
        assert page.inner_text(".user") == "Bonjour, comment ça va ?"
        reply = page.eval_on_selector(".assistant", "e => e.textContent")
        assert page.inner_text("#model") == "tiny"
        assert chunks and chunks[0].startswith("text/event-stream")  # the page asked for, and got, a stream
        assert page.evaluate("window.updates") >= 4  # two bubbles, then the reply grew delta by delta
        expected = httpx.post(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                              json={"model": "tiny", "temperature": 0, "max_tokens": 12, "messages": [
                                  {"role": "user", "content": "Bonjour, comment ça va ?"}]}, timeout=60).json()
        assert reply and reply == expected["choices"][0]["message"]["content"]

        page.fill("#key", "wrong")  # a wrong key shows the server's error instead of a reply
        page.fill("#input", "Encore ?")
        page.press("#input", "Enter")
        page.wait_for_selector(".error", timeout=30_000)
        assert "API key" in page.inner_text(".error")
        page.close()
    finally:
        server.stop()
