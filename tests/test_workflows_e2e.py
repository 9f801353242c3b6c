"""The headline task as a workflow, end to end with the embedded model only (`DOCENT_LLM_BACKEND=local`,
which cannot call tools): "Compare the MIT, BSD-3-Clause and Apache-2.0 licenses in a table and email it
to legal@example.com".

Everything real: Redis, the web process, a dramatiq worker process (SIGKILLed in one test), the SMTP sink,
the demo corpus' license texts in a real index (hash embedder: no embedding model files), the chat widget
and the reviewer console in headless Chromium. No scripted model: nothing here can call a tool but code.
Set DOCENT_TEST_SCREENSHOTS=<dir> to keep a screenshot of the chat page with the table.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from store.events import AnswerCompleted, ApprovalExpired, ToolIntent, ToolResult, TurnStarted
from store.redis import EmbeddedRedis
from store.settings import Settings
from tests.server_proc import ServerProcess, server_env
from tests.test_approvals_e2e import (
    CHROMIUM,
    WAIT_MS,
    Worker,
    World,
    browser,
    build_index,
    open_console,
    pick,
    requested,
    wait_until,
)
from tests.test_workflows import LICENSES

__all__ = ["browser"]  # the fixture, shared with the approvals test

HEADLINE = (
    "Compare the MIT, BSD-3-Clause and Apache-2.0 licenses in a table and email it to legal@example.com"
)
TITLES = ("MIT License", "BSD 3-Clause License", "Apache License 2.0")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (make browser)"),
]


@pytest.fixture(scope="module")
def world(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from actors.testing import SinkThread, SmtpSink

    data = tmp_path_factory.mktemp("wf-e2e")
    smtp = SmtpSink()
    with SinkThread(smtp):
        env = server_env(redis_server.url, data, embed_model="hash", llm_backend="local",
                         smtp_port=str(smtp.port), allowed_roots=str(data),
                         broker_heartbeat_timeout_ms="2000")  # fmt: skip
        build_index(Settings.from_env(env), data / "demo-src", LICENSES)
        worker = Worker(env)
        worker.start()
        web = ServerProcess(env, app="server.app:create_app").start()
        try:
            yield World(web, worker, smtp, None, redis_server.url)
        finally:
            web.stop()
            worker.stop()


async def ask(world: World, browser: Any, text: str = HEADLINE) -> tuple[Any, str]:
    page = await browser.new_page(viewport={"width": 1280, "height": 1100})
    await page.goto(f"{world.web.http_url}/?token={world.token('alice', groups=('legal',))}")
    await page.wait_for_selector('.docent-status[data-state="connected"]', timeout=WAIT_MS)
    conv = await page.get_attribute(".docent", "data-conversation")
    await page.fill(".docent-input", text)
    await page.click(".docent-send")
    return page, conv


async def waiting(page: Any) -> None:
    await page.wait_for_selector('.docent-approval[data-state="waiting"]', timeout=WAIT_MS)
    assert "send_email" in (await page.text_content(".docent-approval") or "")


async def table_rows(page: Any) -> list[list[str]]:
    rows = await page.query_selector_all(".docent-answer table.docent-table tbody tr")
    return [[(await c.text_content() or "") for c in await r.query_selector_all("td")] for r in rows]


def emails_to_legal(world: World) -> list[Any]:
    return [m for m in world.smtp.messages if m.rcpt_to == ("legal@example.com",)]


async def test_approved_workflow_builds_the_cited_table_and_sends_one_email(
    world: World, browser: Any
) -> None:
    errors: list[str] = []
    console = await open_console(world, browser)  # open first: the approval must arrive live
    console.on("pageerror", lambda exc: errors.append(str(exc)))
    before = len(emails_to_legal(world))
    chat, conv = await ask(world, browser)
    chat.on("pageerror", lambda exc: errors.append(str(exc)))
    await waiting(chat)
    (started,) = [e for e in world.events(conv) if isinstance(e, TurnStarted)]
    assert (started.route, started.workflow) == ("workflow", "compare_table")
    request = requested(world, conv)
    await pick(console, request.approval_id)  # arrived live, no reload
    shown = json.loads(await console.text_content(".review-args") or "null")
    assert shown["to"] == ["legal@example.com"] and "| MIT License [1] |" in shown["body"]
    assert "Workflow compare_table" in (await console.text_content(".review-reason") or "")
    assert emails_to_legal(world)[before:] == []
    await console.click(".review-approve")
    await console.wait_for_selector('.review-result[data-state="ok"]', timeout=WAIT_MS)

    await chat.wait_for_selector('.docent-approval[data-state="approved"]', timeout=WAIT_MS)
    await chat.wait_for_selector(".docent-answer[data-done='1']", timeout=WAIT_MS)
    rows = await table_rows(chat)
    assert len(rows) == 3 and all(len(r) >= 3 for r in rows)
    assert [next(t for t in TITLES if t in row[0]) for row in rows] == list(TITLES)  # one row per document
    cites = await chat.query_selector_all(".docent-answer table .docent-cite:not(.docent-cite-unknown)")
    assert len(cites) >= 3  # the cells cite their documents
    listed = await chat.text_content(".docent-citations") or ""
    assert all(t in listed for t in TITLES)
    assert "Emailed to legal@example.com" in (await chat.text_content(".docent-answer") or "")
    if shots := os.environ.get("DOCENT_TEST_SCREENSHOTS"):
        await chat.set_viewport_size({"width": 1280, "height": 2400})  # the whole conversation in view
        await chat.screenshot(path=str(Path(shots) / "workflow-chat.png"))

    await wait_until(lambda: len(emails_to_legal(world)) > before)
    await asyncio.sleep(1.0)  # a duplicate would show up now
    (mail,) = emails_to_legal(world)[before:]
    assert "MIT License [1]" in mail.data.decode() and "Apache License 2.0" in mail.data.decode()
    answer = world.events(conv)[-1]
    assert isinstance(answer, AnswerCompleted)
    assert [c.doc_id for c in answer.citations] == [
        "license/mit",
        "license/bsd-3-clause",
        "license/apache-2.0",
    ]
    assert set(LICENSES) >= {c.doc_id for c in answer.citations}
    assert errors == []


async def test_denied_workflow_shows_the_table_and_sends_nothing(world: World, browser: Any) -> None:
    before = len(emails_to_legal(world))
    chat, conv = await ask(world, browser)
    await waiting(chat)
    request = requested(world, conv)
    console = await open_console(world, browser, reviewer="ravi")
    await pick(console, request.approval_id)
    await console.fill(".review-decision-reason", "not outside legal")
    await console.click(".review-deny")
    await chat.wait_for_selector('.docent-approval[data-state="denied"]', timeout=WAIT_MS)
    await chat.wait_for_selector(".docent-answer[data-done='1']", timeout=WAIT_MS)
    assert len(await table_rows(chat)) == 3
    text = await chat.text_content(".docent-answer") or ""
    assert "Not emailed to legal@example.com" in text and "not outside legal" in text
    events = world.events(conv)
    assert not [i for i in events if isinstance(i, ToolIntent) and i.tool == "send_email"]
    assert len(emails_to_legal(world)) == before


async def test_an_unanswered_workflow_approval_expires_and_nothing_is_sent(
    world: World, browser: Any
) -> None:
    before = len(emails_to_legal(world))
    world.worker.stop()
    world.worker.start(approval_clock_offset_ms=str(3 * 24 * 3600 * 1000))
    try:
        chat, conv = await ask(world, browser)
        await chat.wait_for_selector('.docent-approval[data-state="expired"]', timeout=WAIT_MS)
        await chat.wait_for_selector(".docent-answer[data-done='1']", timeout=WAIT_MS)
        assert "the approval request expired" in (await chat.text_content(".docent-answer") or "")
    finally:
        world.worker.stop()
        world.worker.start()
    events = world.events(conv)
    assert len([e for e in events if isinstance(e, ApprovalExpired)]) == 1
    assert not [i for i in events if isinstance(i, ToolIntent) and i.tool == "send_email"]
    assert len(emails_to_legal(world)) == before


async def test_a_worker_sigkilled_mid_workflow_resumes_and_sends_once(world: World, browser: Any) -> None:
    chat, conv = await ask(world, browser)
    await waiting(chat)
    request = requested(world, conv)
    before = len(emails_to_legal(world))
    world.worker.kill()  # SIGKILL mid-workflow: the table is built, the email waits for its approval
    rita = world.token("rita", roles=("reviewer",))
    status, body = world.http("POST", f"/api/approvals/{request.approval_id}/decision",
                              {"decision": "approve"}, rita)  # fmt: skip
    assert status == 200 and body["approval"]["state"] == "approved"
    await asyncio.sleep(1.0)
    assert len(emails_to_legal(world)) == before  # no worker: nothing can send
    world.worker.start()
    await chat.wait_for_selector(".docent-answer[data-done='1']", timeout=WAIT_MS)
    await wait_until(lambda: len(emails_to_legal(world)) > before)
    await asyncio.sleep(1.0)
    assert len(emails_to_legal(world)) == before + 1
    events = world.events(conv)
    sends = [r for r in events if isinstance(r, ToolResult) and r.tool == "send_email"]
    assert len(sends) == 1 and sends[0].error is None and isinstance(events[-1], AnswerCompleted)
