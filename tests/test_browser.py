"""The chat widget and the embeddable client in a real headless Chromium (Debian's package).

Skipped when /usr/bin/chromium is absent. The test plays the worker by writing the conversation streams.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp import web as aioweb

from actors.testing.ports import HeldPort
from server.auth import mint_token
from store.events import (
    AnswerCompleted,
    Citation,
    LLMFailed,
    LLMRequested,
    RetrievalDone,
    SentenceAttributed,
    TextSpan,
    UserMessage,
    decode_event,
)
from store.redis import EmbeddedRedis, sync_client
from tests.server_proc import ServerProcess, StreamWriter, server_env

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 45_000  # a headless Chromium page across the web process and Redis, on a loaded machine

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (make browser)"),
]

CITATIONS = (
    Citation(n=1, chunk_id="c1", doc_id="handbook", title="Employee Handbook", heading="Travel",
             snippet="Economy class for flights under six hours."),
)  # fmt: skip


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    playwright_api = pytest.importorskip("playwright.async_api")
    async with playwright_api.async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def wait_for_ask(r: redis.Redis, conv: str) -> UserMessage:
    """The worker's side: the UserMessage the web process put in the inbox."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline:
        entries: Any = r.xrange(f"conv:{{{conv}}}:inbox")
        if entries:
            item = decode_event(entries[0][1][b"e"])
            assert isinstance(item, UserMessage)
            return item
        await asyncio.sleep(0.05)
    raise AssertionError("no ask reached the inbox")


async def open_chat(browser: Any, web: ServerProcess, **page_options: Any) -> tuple[Any, str, list[str]]:
    """The widget's page, connected as alice of acme: (page, its conversation id, the page's errors)."""
    token = mint_token(web.settings, "acme", "alice", ttl=600)
    page = await browser.new_page(**page_options)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{web.http_url}/?token={token}")
    await page.wait_for_selector('.docent-status[data-state="connected"]', timeout=WAIT_MS)
    return page, str(await page.get_attribute(".docent", "data-conversation")), errors


async def model_reading(page: Any, r: redis.Redis, conv: str, question: str) -> StreamWriter:
    """Ask `question` in the widget, then play the worker up to the model call (sources given, no token):
    the writer of the rest of the turn."""
    await page.fill(".docent-input", question)
    await page.click(".docent-send")
    asked = await wait_for_ask(r, conv)
    worker = StreamWriter(r, conv)
    worker.event(UserMessage(turn=1, text=asked.text, user="alice", tenant="acme",
                             client_message_id=asked.client_message_id))  # fmt: skip
    worker.event(RetrievalDone(turn=1, query=asked.text, chunk_ids=("c1", "c2"), index_version="v1",
                               sources=SOURCES))  # fmt: skip
    worker.event(LLMRequested(turn=1, step=0, model="smollm2", prompt_hash="h"))
    return worker


async def wait_for_answer_text(page: Any, text: str) -> None:
    script = f"() => (document.querySelector('.docent-answer') || {{}}).textContent === {json.dumps(text)}"
    await page.wait_for_function(script, timeout=WAIT_MS)


async def test_widget_streams_cites_and_survives_a_killed_web_process(
    browser: Any, redis_server: EmbeddedRedis, redis_url: str, tmp_path: Path
) -> None:
    r = sync_client(redis_url)
    with ServerProcess(server_env(redis_server.url, tmp_path)) as web:
        page, conv, errors = await open_chat(browser, web)
        assert "token=" not in page.url  # the credential left the address bar
        assert conv

        await page.fill(".docent-input", "What is the travel policy?")
        await page.click(".docent-send")
        asked = await wait_for_ask(r, conv)
        assert asked.text == "What is the travel policy?" and asked.user == "alice"

        worker = StreamWriter(r, conv)
        worker.event(UserMessage(turn=1, text=asked.text, user="alice", tenant="acme",
                                 client_message_id=asked.client_message_id))  # fmt: skip
        for piece in ["Flights ", "under six hours ", "fly **economy**"]:
            worker.delta(piece, 1)
        answer = page.locator(".docent-turn[data-turn='1'] .docent-answer")
        await wait_for_answer_text(page, "Flights under six hours fly economy")

        web.kill()  # mid-answer: no close frame, the page sees the socket die
        await page.wait_for_selector('.docent-status[data-state="reconnecting"]', timeout=WAIT_MS)
        worker.delta(" [1].", 1)
        worker.delta(" Longer flights may use premium economy.", 1)
        web.start()  # same port

        streamed = "Flights under six hours fly economy [1]. Longer flights may use premium economy."
        # Every token once: nothing lost while the server was down, nothing repeated after.
        await wait_for_answer_text(page, streamed)
        final = "Flights under six hours fly **economy** [1]. Longer flights may use premium economy."
        worker.event(AnswerCompleted(turn=1, text=final, citations=CITATIONS))
        await page.wait_for_selector(".docent-answer[data-done='1']", timeout=WAIT_MS)

        assert await answer.text_content() == streamed
        assert await page.locator(".docent-turn").count() == 1
        assert await page.locator(".docent-user").all_text_contents() == ["What is the travel policy?"]
        assert await page.locator(".docent-answer strong").text_content() == "economy"
        assert await page.locator(".docent-cursor").count() == 0
        assert await page.get_attribute(".docent-status", "data-state") == "connected"

        await page.click(".docent-answer .docent-cite[data-n='1']")
        source = page.locator(".docent-source")
        await source.wait_for(state="visible", timeout=WAIT_MS)
        assert await source.locator(".docent-source-title").text_content() == "Employee Handbook"
        assert await source.locator(".docent-source-heading").text_content() == "Travel"
        assert "Economy class" in (await source.locator(".docent-source-snippet").text_content() or "")

        # A reload replays the conversation from the log: the same single answer.
        await page.reload()
        await page.wait_for_selector(".docent-answer[data-done='1']", timeout=WAIT_MS)
        assert await page.locator(".docent-turn").count() == 1
        assert await answer.text_content() == streamed
        assert errors == []


LINKED = 'See [the docs](https://docs.example/a[1]b) and [evil](https://evil.example/[2]"onclick="x) [1].'
LINKED_TEXT = "See the docs and evil [1]."
ANCHORS = """() => [...document.querySelectorAll('.docent-answer a')].map(a => ({
  href: a.getAttribute('href'), rel: a.getAttribute('rel'), text: a.textContent,
  attributes: a.getAttributeNames().sort(), buttons: a.querySelectorAll('button').length}))"""


async def test_links_keep_their_targets_and_a_retried_model_call_starts_over(
    browser: Any, redis_server: EmbeddedRedis, redis_url: str, tmp_path: Path
) -> None:
    r = sync_client(redis_url)
    with ServerProcess(server_env(redis_server.url, tmp_path)) as web:
        page = await browser.new_page()
        await page.goto(f"{web.http_url}/?token={mint_token(web.settings, 'acme', 'alice', ttl=600)}")
        await page.wait_for_selector('.docent-status[data-state="connected"]', timeout=WAIT_MS)
        conv = await page.get_attribute(".docent", "data-conversation")
        assert conv
        await page.fill(".docent-input", "Where are the docs?")
        await page.click(".docent-send")
        asked = await wait_for_ask(r, conv)
        worker = StreamWriter(r, conv)
        worker.event(UserMessage(turn=1, text=asked.text, user="alice", tenant="acme",
                                 client_message_id=asked.client_message_id))  # fmt: skip
        worker.event(LLMRequested(turn=1, step=0, model="m", prompt_hash="p"))
        worker.delta("A partial answer the timeout cut", 1)
        await wait_for_answer_text(page, "A partial answer the timeout cut")
        worker.event(LLMFailed(turn=1, step=0, code="llm_timeout", recoverable=True))
        worker.event(LLMRequested(turn=1, step=0, model="m", prompt_hash="p"))  # the retry
        worker.delta(LINKED[:20], 1)
        worker.delta(LINKED[20:], 1)
        await wait_for_answer_text(page, LINKED_TEXT)  # the failed attempt's text is gone

        anchors = await page.evaluate(ANCHORS)
        assert anchors == [
            {"href": "https://docs.example/a[1]b", "rel": "noopener noreferrer", "text": "the docs",
             "attributes": ["href", "rel", "target"], "buttons": 0},
            {"href": 'https://evil.example/[2]"onclick="x', "rel": "noopener noreferrer", "text": "evil",
             "attributes": ["href", "rel", "target"], "buttons": 0},
        ]  # fmt: skip
        cites = page.locator(".docent-answer .docent-cite")
        assert await cites.count() == 1 and await cites.get_attribute("data-n") == "1"

        await page.reload()  # the replay of the running turn resets the same way
        await wait_for_answer_text(page, LINKED_TEXT)
        worker.event(AnswerCompleted(turn=1, text=LINKED, citations=CITATIONS))
        await page.wait_for_selector(".docent-answer[data-done='1']", timeout=WAIT_MS)
        assert await page.evaluate(ANCHORS) == anchors
        assert await page.locator(".docent-answer").text_content() == LINKED_TEXT


EMBED_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>intranet</title></head><body>
<script src="{base}/static/docent.js"></script>
<script>
  window.result = {{deltas: "", citations: [], done: null, ready: null}};
  const chat = Docent.connect({{url: "{ws}", token: "{token}"}});
  chat.on("ready", (f) => {{ window.result.ready = f.conversation_id; }});
  chat.ask("embedded question", {{
    mode: "qa",
    onDelta: (text) => {{ window.result.deltas += text; }},
    onCitation: (c) => {{ window.result.citations.push(c.title); }},
    onDone: (event) => {{ window.result.done = event.text; }},
  }});
</script>
<script type="module">
  import Docent, {{ renderMarkdown }} from "{base}/static/docent.mjs";
  window.moduleOk = typeof Docent.connect === "function"
    && renderMarkdown("**<b>**") === "<p><strong>&lt;b&gt;</strong></p>";
</script>
</body></html>"""


async def test_the_client_embeds_in_a_page_from_another_origin(
    browser: Any, redis_server: EmbeddedRedis, redis_url: str, tmp_path: Path
) -> None:
    r = sync_client(redis_url)
    held = HeldPort()  # the other origin's port, ours until its site listens
    other_port = held.port
    other_origin = f"http://127.0.0.1:{other_port}"
    with ServerProcess(server_env(redis_server.url, tmp_path, allowed_origins=other_origin)) as web:
        token = mint_token(web.settings, "acme", "erin", ttl=600)
        html = EMBED_PAGE.format(base=web.http_url, ws=web.ws_url, token=token)

        async def index(request: aioweb.Request) -> aioweb.Response:
            return aioweb.Response(text=html, content_type="text/html")

        app = aioweb.Application()
        app.router.add_get("/", index)
        runner = aioweb.AppRunner(app)
        await runner.setup()
        await aioweb.TCPSite(runner, "127.0.0.1", other_port).start()
        held.release()
        try:
            page = await browser.new_page()
            await page.goto(f"{other_origin}/")
            await page.wait_for_function("() => window.result && window.result.ready", timeout=WAIT_MS)
            conv = await page.evaluate("() => window.result.ready")
            asked = await wait_for_ask(r, conv)
            worker = StreamWriter(r, conv)
            worker.event(UserMessage(turn=1, text=asked.text, user="erin", tenant="acme",
                                     client_message_id=asked.client_message_id))  # fmt: skip
            worker.delta("Embedded ", 1)
            worker.delta("answer [1]", 1)
            worker.event(AnswerCompleted(turn=1, text="Embedded answer [1]", citations=CITATIONS))
            await page.wait_for_function("() => window.result.done", timeout=WAIT_MS)
            result = await page.evaluate("() => window.result")
            assert result["deltas"] == "Embedded answer [1]"
            assert result["done"] == "Embedded answer [1]"
            assert result["citations"] == ["Employee Handbook"]
            await page.wait_for_function("() => window.moduleOk === true", timeout=WAIT_MS)
        finally:
            await runner.cleanup()


SOURCES = (
    Citation(n=1, chunk_id="c1", doc_id="pydoc/shlex", title="shlex — simple lexical analysis",
             heading="Functions", snippet="split(s, comments=False, posix=True): split the string s using "
             "shell-like syntax."),
    Citation(n=2, chunk_id="c2", doc_id="pydoc/argparse", title="argparse — command-line parsing",
             heading="Description", snippet="The argparse module makes it easy to write user-friendly "
             "command-line interfaces."),
)  # fmt: skip
SCREENSHOTS = Path(__file__).resolve().parent.parent / ".cache" / "screenshots"


async def test_sources_show_before_the_first_token_and_unsupported_sentences_are_marked(
    browser: Any, redis_server: EmbeddedRedis, redis_url: str, tmp_path: Path
) -> None:
    r = sync_client(redis_url)
    with ServerProcess(server_env(redis_server.url, tmp_path)) as web:
        page, conv, _ = await open_chat(browser, web, viewport={"width": 900, "height": 700})
        worker = await model_reading(page, r, conv, "How do I split a shell command line?")

        panel = page.locator(".docent-turn[data-turn='1'] .docent-sources")
        await panel.wait_for(state="visible", timeout=WAIT_MS)
        # The model is still reading: no token yet, the passages are already there.
        assert await page.locator(".docent-answer").text_content() == ""
        titles = await panel.locator(".docent-source-open").all_text_contents()
        assert titles == [SOURCES[0].title, SOURCES[1].title]
        snippet = await panel.locator(".docent-source-item-snippet").first.text_content()
        assert "shell-like syntax" in (snippet or "")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOTS / "sources-first.png"))

        await page.click(".docent-sources .docent-source-open[data-n='2']")  # readable while waiting
        assert await page.locator(".docent-source-title").text_content() == SOURCES[1].title

        worker.delta("Use shlex.split", 1)
        await wait_for_answer_text(page, "Use shlex.split")
        box_answer = await page.locator(".docent-answer").bounding_box()
        box_panel = await panel.bounding_box()
        assert box_answer and box_panel and box_answer["y"] < box_panel["y"]  # the answer streams above

        final = "Use shlex.split [1]. The moon is made of cheese."
        start = final.index("The moon")
        worker.event(AnswerCompleted(turn=1, text=final, citations=SOURCES[:1], sources=SOURCES,
                                     unsupported=(TextSpan(start=start, end=len(final)),)))  # fmt: skip
        await page.wait_for_selector(".docent-answer[data-done='1']", timeout=WAIT_MS)
        unsupported = await page.locator(".docent-unsupported").all_text_contents()
        assert unsupported == ["The moon is made of cheese."]
        assert await page.locator(".docent-answer .docent-cite").all_text_contents() == ["[1]"]
        assert await panel.locator(".docent-source-cited .docent-source-open").all_text_contents() == [
            SOURCES[0].title
        ]
        await page.screenshot(path=str(SCREENSHOTS / "answer-attributed.png"))


STREAMED = "Use shlex.split to split a command line. The moon is made of cheese. And"
MOON = ["The moon is made of cheese."]


def attributed(sentence: str, passages: tuple[int, ...]) -> SentenceAttributed:
    start = STREAMED.index(sentence)
    end = start + len(sentence)
    return SentenceAttributed(turn=1, start=start, end=end, marker=end - 1, passages=passages)


async def test_sentences_are_attributed_while_the_answer_streams(
    browser: Any, redis_server: EmbeddedRedis, redis_url: str, tmp_path: Path
) -> None:
    r = sync_client(redis_url)
    with ServerProcess(server_env(redis_server.url, tmp_path)) as web:
        page, conv, errors = await open_chat(browser, web, viewport={"width": 900, "height": 700})
        worker = await model_reading(page, r, conv, "How do I split a shell command line?")
        answer = page.locator(".docent-turn[data-turn='1'] .docent-answer")
        worker.delta("Use shlex.split to split a command line. The", 1)
        worker.live(attributed("Use shlex.split to split a command line.", (1,)))
        await wait_for_answer_text(page, "Use shlex.split to split a command line [1]. The")
        assert await answer.get_attribute("data-done") == "0"  # still streaming, the marker is there
        assert await answer.locator(".docent-cite").all_text_contents() == ["[1]"]

        worker.delta(" moon is made of cheese. And", 1)
        worker.live(attributed("The moon is made of cheese.", ()))
        await page.wait_for_selector(".docent-answer[data-done='0'] .docent-unsupported", timeout=WAIT_MS)
        assert await page.locator(".docent-unsupported").all_text_contents() == MOON
        streamed_view = await answer.text_content()
        assert streamed_view == "Use shlex.split to split a command line [1]. The moon is made of cheese. And"

        final = "Use shlex.split to split a command line [1]. The moon is made of cheese. And"
        start = final.index("The moon")
        worker.event(AnswerCompleted(turn=1, text=final, citations=SOURCES[:1], sources=SOURCES,
                                     unsupported=(TextSpan(start=start, end=start + 27),)))  # fmt: skip
        await page.wait_for_selector(".docent-answer[data-done='1']", timeout=WAIT_MS)
        assert await answer.text_content() == streamed_view  # the finished answer agrees with the stream
        assert await page.locator(".docent-unsupported").all_text_contents() == MOON
        assert errors == []
