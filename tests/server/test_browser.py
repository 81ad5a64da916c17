"""The web page in a real browser: Debian's chromium driven by Playwright (never `playwright install`).

Chat with a streamed reply and the memory it used, delete a memory, memorize a document with a progress
bar, cast a human-evaluation vote, see the report. Screenshots go to the test's folder, or to
$MEMLM_SCREENSHOTS when set (docs/results/ keeps two of them).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
REPORT = Path(__file__).resolve().parents[2] / "docs" / "results" / "eval-quick"

pytestmark = pytest.mark.browser


def until(page, expression: str, timeout: float = 60) -> None:
    """Wait until a JS expression is true. Polled from here: Playwright's wait_for_function would eval()
    inside the page, which the page's Content-Security-Policy (rightly) forbids."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.05)


@pytest.fixture
def browser():
    if not CHROMIUM.exists():
        if os.environ.get("MEMLM_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing (CI installs it: .ci/run)")
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("MEMLM_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_the_page_end_to_end(browser, live, shots, tmp_path):
    with live("bank", "knn-joint", generation={"max_new_tokens": 24}, segment_length=128,
              report_dir=REPORT) as (url, app):
        engine = app.state.engine
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.goto(url + "/")
        page.wait_for_selector("#user-badge:has-text('local')")
        assert page.locator("#model").input_value() == "tiny-llama+bank+knn"

        # 1. chat: the reply streams in, the memory used shows beside it
        def ask(text: str) -> list[int]:
            before = page.locator(".turn.assistant[data-done=true]").count()
            page.fill("#chat-input", text)
            page.press("#chat-input", "Enter")
            lengths = []
            deadline = time.monotonic() + 30
            while page.locator(".turn.assistant[data-done=true]").count() == before:
                assert time.monotonic() < deadline, "no reply"
                lengths.append(len(page.locator(".turn.assistant .content").last.text_content() or ""))
                time.sleep(0.02)
            return lengths

        ask("My dog is called Biscuit.")
        learned = page.locator(".turn.assistant").last.locator(".learned")
        assert "The user's dog is called Biscuit." in learned.text_content()
        slow = engine.model.backbone.register_forward_pre_hook(lambda *_: time.sleep(0.03))
        try:
            lengths = ask("What is my dog's name?")
        finally:
            slow.remove()
        growing = sorted(set(lengths))
        assert len(growing) >= 4, lengths  # the text grew piece by piece while the reply streamed
        side = page.locator(".turn.assistant").last.locator(".side")
        assert side.locator("li").first.text_content().startswith("The user's dog is called Biscuit.")
        assert page.locator(".turn.assistant").last.locator(".content").text_content()
        page.screenshot(path=str(shots / "server-chat.png"))

        # 2. memories: listed, searched, edited, deleted
        page.click("[data-tab=memories]")
        page.fill("#memory-new", "I live in Lisbon. My sister is called Ana.")
        page.click("#memory-add-form button")
        page.wait_for_selector("#memory-list li >> nth=2")
        page.fill("#memory-query", "Where do I live?")
        page.click("#memory-search-form button[type=submit]")
        page.wait_for_selector("#memory-count:has-text('matching')")
        assert page.locator("#memory-list li .text").first.text_content() == "The user lives in Lisbon."
        page.click("#memory-show-all")
        page.wait_for_selector("#memory-count:has-text('3 memories')")
        sister = page.locator("#memory-list li", has_text="sister")
        sister.locator("button", has_text="Edit").click()
        page.fill("#memory-list li input.edit", "The user's sister is called Anabela.")
        page.click("#memory-list li button:has-text('Save')")
        page.wait_for_selector("#memory-list li:has-text('Anabela')")
        page.screenshot(path=str(shots / "server-memories.png"))
        dog = page.locator("#memory-list li", has_text="Biscuit")
        dog_id = int(dog.get_attribute("data-memory-id"))
        dog.locator("button", has_text="Delete").click()
        page.wait_for_selector(f"#memory-list li[data-memory-id='{dog_id}']", state="detached")
        remaining = [item["memory"] for item in app.state.facts.get_all("local")]
        assert sorted(remaining) == ["The user lives in Lisbon.", "The user's sister is called Anabela."]

        # 3. a document, uploaded as a file, memorized with a progress bar
        page.click("[data-tab=documents]")
        text_file = tmp_path / "zebras.txt"
        text_file.write_text("The zebra Zoltan lives in Kenya near a blue lake. " * 20)
        page.set_input_files("#document-file", str(text_file))
        until(page, "document.querySelector('#document-text').value.length > 100")
        assert page.input_value("#document-title") == "zebras.txt"
        page.click("#document-submit")
        page.wait_for_selector("#document-progress[data-status=done]", timeout=60_000)
        assert page.eval_on_selector("#document-progress", "p => p.value") == 1
        page.wait_for_selector("#document-list li:has-text('zebras.txt')")
        page.fill("#document-query", "Zoltan")
        page.click("#document-search-form button")
        page.wait_for_selector("#document-hits li:has-text('zebras.txt')")
        page.screenshot(path=str(shots / "server-documents.png"))

        # 4. human evaluation: two blind answers, one vote, the tally
        page.click("[data-tab=compare]")
        page.fill("#compare-prompt", "Where do I live?")
        page.click("#compare-submit")
        page.wait_for_selector("#comparison:not([hidden])")
        assert page.locator("#answer-A .who").count() == 0  # blind until the vote
        page.click("[data-vote=B]")
        page.wait_for_selector("#vote-result:not([hidden])")
        assert page.locator("#answer-B").get_attribute("class") == "answer winner"
        assert {page.locator("#answer-A .who").text_content(), page.locator("#answer-B .who").text_content()} == {
            "tiny-llama", "tiny-llama+bank+knn"}
        page.wait_for_selector("#summary-table tbody tr >> nth=1")
        assert app.state.votes.votes()[0].choice == "B"
        page.screenshot(path=str(shots / "server-compare.png"))

        # 5. the report: plots of the evaluation and the human votes
        page.click("[data-tab=report]")
        page.wait_for_selector("#plots img >> nth=1")
        until(page, "[...document.querySelectorAll('#plots img')].every(i => i.complete && i.naturalWidth > 0)")
        assert page.locator("#report-human tbody tr").count() == 2
        page.screenshot(path=str(shots / "server-report.png"), full_page=True)

        # 6. the API tab lists every route from the OpenAPI schema
        page.click("[data-tab=api]")
        page.wait_for_selector("#api-table tbody tr >> nth=19")
        assert page.locator("#api-table tr", has_text="/v1/chat/completions").count() == 1
        assert not errors, errors


def test_the_page_asks_for_a_key_when_the_server_needs_one(browser, live, keys):
    with live() as (url, _):
        page = browser.new_page(viewport={"width": 1000, "height": 500})
        page.goto(url + "/")
        page.wait_for_selector("#key-form:not([hidden])")
        assert "needs an API key" in page.text_content("#notice")
        page.fill("#key", keys["bob"])
        page.click("#key-form button")
        page.wait_for_selector("#user-badge:has-text('bob')")
        assert page.evaluate("localStorage.getItem('memlm-key')") == keys["bob"]
        page.fill("#chat-input", "I like tea.")
        page.press("#chat-input", "Enter")
        page.wait_for_selector(".turn.assistant[data-done=true]")
        page.click("[data-tab=memories]")
        page.wait_for_selector("#memory-list li:has-text('tea')")
        page.evaluate("localStorage.setItem('memlm-key', 'mlm-00000000-" + "x" * 43 + "')")
        page.reload()
        page.wait_for_selector("#notice:has-text('invalid or revoked')")
