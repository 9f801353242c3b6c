"""Human approval end to end: "compare these three contracts into a table and email it".

Everything real: Redis, the web process (`server.app:create_app`, waking actors through dramatiq), a
dramatiq worker process (`python -m dramatiq actors.worker`), the scripted OpenAI-compatible LLM over HTTP,
the SMTP sink, the demo corpus' license texts (GPL-3.0 is readable by group:legal only) in a real index
(hash embedder: no model files), the chat widget and the reviewer console in headless Chromium.

Skipped without /usr/bin/chromium, or before actors/conversation.py and actors/worker.py exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from server.auth import mint_token
from store.approvals import ApprovalLedger
from store.events import (
    AnswerCompleted,
    ApprovalDecided,
    ApprovalExpired,
    ApprovalRequested,
    ToolIntent,
    ToolResult,
    decode_event,
)
from store.redis import EmbeddedRedis
from store.settings import Settings
from tests.server_proc import REPO, TEST_ADMIN_KEY, ServerProcess, server_env

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
WAIT_MS = 40_000
TENANT = "default"  # the demo corpus' tenant
CONTRACTS = ("license/apache-2.0", "license/mit", "license/gpl-3.0")
TABLE = (
    "| License | Warranty | Patent grant |\n"
    "| --- | --- | --- |\n"
    "| Apache-2.0 | none (AS IS) | yes, explicit |\n"
    "| MIT | none (AS IS) | not mentioned |\n"
    "| GPL-3.0 | none (AS IS) | yes, from contributors |"
)
EMAIL = {"to": ["legal@acme.test"], "subject": "Contract comparison", "body": TABLE}
QUESTION = "compare these three contracts into a table and email it"


def _steps(last_text: str) -> dict[str, Any]:
    return {
        "steps": [
            *({"tool_calls": [{"name": "read_document", "arguments": {"doc_id": d}}]} for d in CONTRACTS),
            {"tool_calls": [{"name": "compare_documents",
                             "arguments": {"doc_ids": list(CONTRACTS), "fields": ["warranty", "patent"]}}]},
            {"text": "Here is the table; I will email it to legal.",
             "tool_calls": [{"name": "send_email", "arguments": EMAIL}]},
            {"text": last_text},
        ]
    }  # fmt: skip


SCRIPTS = {"approve": _steps("The comparison table was emailed to legal."),
           "deny": _steps("The email was not sent: the reviewer denied it."),
           "expire": _steps("Nobody approved the email in time, so it was not sent.")}  # fmt: skip

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (make browser)"),
    pytest.mark.skipif(
        importlib.util.find_spec("actors.conversation") is None
        or importlib.util.find_spec("actors.worker") is None,
        reason="needs actors/conversation.py and actors/worker.py",
    ),
]


# ---- the world ------------------------------------------------------------------------------------------


class Worker:
    """`python -m dramatiq actors.worker` for the conversation and approvals queues; SIGKILL-able."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, **overrides: str) -> None:
        env = {**self.env, **{f"DOCENT_{k.upper()}": v for k, v in overrides.items()}}
        command = [sys.executable, "-m", "dramatiq", "actors.worker", "--queues", "conversation", "approvals",
                   "--processes", "1", "--threads", "2"]  # fmt: skip
        # Its own process group: dramatiq forks worker processes, and a SIGKILL must reach them too.
        self.process = subprocess.Popen(command, env=env, cwd=REPO, start_new_session=True)

    def kill(self) -> None:
        """SIGKILL the whole worker (main and forked processes): no acks, no cleanup."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)  # no forked worker outlives the test


class World:
    def __init__(self, web: ServerProcess, worker: Worker, smtp: Any, llm: Any, redis_url: str) -> None:
        self.web = web
        self.worker = worker
        self.smtp = smtp
        self.llm = llm
        self.ledger = ApprovalLedger.from_url(redis_url)

    def token(self, user: str, roles: tuple[str, ...] = ("user",), groups: tuple[str, ...] = ()) -> str:
        return mint_token(self.web.settings, TENANT, user, groups=groups, roles=roles, ttl=900)

    def events(self, conv: str) -> list[Any]:
        raw: Any = self.ledger.client.xrange(f"conv:{{{conv}}}:log")
        return [decode_event(fields[b"e"]) for _, fields in raw]

    def http(self, method: str, path: str, body: Any = None, token: str | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:  # fmt: skip
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.web.http_url}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


def build_index(settings: Settings, source: Path, doc_ids: tuple[str, ...] = CONTRACTS) -> None:
    from index.demo import build_demo_corpus
    from index.embed import load_embedder
    from index.ingest import Ingestor

    docs = {d.doc_id: d for d in build_demo_corpus(source, modules=())}
    embedder = load_embedder(settings, "hash", purpose="offline")
    with Ingestor(settings, embedder) as ingestor:
        for doc_id in doc_ids:
            doc = docs[doc_id]
            path = Path(doc.path) if Path(doc.path).is_absolute() else source / doc.path
            ingestor.ingest_document(doc_id, path=path, title=doc.title, access=doc.access)


@pytest.fixture(scope="module")
def world(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from actors.testing import ScriptedLLMThread, SinkThread, SmtpSink

    data = tmp_path_factory.mktemp("e2e")
    smtp = SmtpSink()
    with SinkThread(smtp), ScriptedLLMThread(SCRIPTS) as llm:
        env = server_env(
            redis_server.url,
            data,
            embed_model="hash",
            llm_backend="openai",
            llm_url=llm.url,
            llm_max_retries="0",
            smtp_port=str(smtp.port),
            allowed_roots=str(data),
            broker_heartbeat_timeout_ms="2000",
            top_k="3",
        )
        build_index(Settings.from_env(env), data / "demo-src")
        worker = Worker(env)
        worker.start()
        web = ServerProcess(env, app="server.app:create_app")
        try:  # a web process that does not start leaves no worker behind to take later tests' messages
            yield World(web.start(), worker, smtp, llm, redis_server.url)
        finally:
            web.stop()
            worker.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    playwright_api = pytest.importorskip("playwright.async_api")
    async with playwright_api.async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def ask_in_chat(world: World, browser: Any, script: str) -> tuple[Any, str]:
    """alice (group legal) asks in the chat widget; returns the page and the conversation id."""
    page = await browser.new_page()
    await page.goto(f"{world.web.http_url}/?token={world.token('alice', groups=('legal',))}")
    await page.wait_for_selector('.docent-status[data-state="connected"]', timeout=WAIT_MS)
    conv = await page.get_attribute(".docent", "data-conversation")
    await page.select_option(".docent-mode", "agent")
    await page.fill(".docent-input", f"[script:{script}@{conv}] {QUESTION}")
    await page.click(".docent-send")
    await page.wait_for_selector('.docent-approval[data-state="waiting"]', timeout=WAIT_MS)
    assert "send_email" in (await page.text_content(".docent-approval") or "")
    return page, conv


async def open_console(world: World, browser: Any, reviewer: str = "rita") -> Any:
    page = await browser.new_page()
    await page.goto(f"{world.web.http_url}/review?token={world.token(reviewer, roles=('reviewer',))}")
    assert "token=" not in page.url
    await page.wait_for_selector('.review-status[data-state="connected"]', timeout=WAIT_MS)
    return page


async def pick(console: Any, approval_id: str) -> None:
    item = f'.review-queue .review-item[data-id="{approval_id}"]'
    await console.wait_for_selector(item, timeout=WAIT_MS)
    await console.click(f"{item} .review-pick")
    await console.wait_for_selector(f'.review-detail[data-id="{approval_id}"]', timeout=WAIT_MS)


def requested(world: World, conv: str) -> ApprovalRequested:
    (request,) = [e for e in world.events(conv) if isinstance(e, ApprovalRequested)]
    return request


async def wait_until(predicate: Any, timeout_s: float = WAIT_MS / 1000) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


def emails_for(world: World, approval_key: str) -> list[Any]:
    return [m for m in world.smtp.messages if approval_key in m.message_id]


# ---- tests ----------------------------------------------------------------------------------------------


async def test_reviewer_approves_in_the_console_and_one_email_with_the_table_goes_out(
    world: World, browser: Any
) -> None:
    errors: list[str] = []
    chat, conv = await ask_in_chat(world, browser, "approve")
    chat.on("pageerror", lambda exc: errors.append(str(exc)))
    request = requested(world, conv)
    reads = [r for r in world.events(conv) if isinstance(r, ToolResult) and r.tool == "read_document"]
    assert len(reads) == 3 and all(r.error is None for r in reads)  # GPL-3.0 too: alice is in legal
    assert world.smtp.messages == []

    console = await open_console(world, browser)
    console.on("pageerror", lambda exc: errors.append(str(exc)))
    await pick(console, request.approval_id)
    assert await console.text_content(".review-detail-title") == "send_email"
    assert await console.text_content(".review-requested-by") == "alice"
    assert QUESTION in (await console.text_content(".review-context") or "")
    assert await console.text_content(".review-reason")
    shown = json.loads(await console.text_content(".review-args") or "null")
    assert shown == {**EMAIL, "html": False}  # the exact (canonical) arguments the approval covers

    # The web process dies while the approval is pending; both pages reconnect by themselves.
    world.web.restart()
    await console.wait_for_selector('.review-status[data-state="reconnecting"]', timeout=WAIT_MS)
    await console.wait_for_selector('.review-status[data-state="connected"]', timeout=WAIT_MS)
    await pick(console, request.approval_id)
    await console.fill(".review-decision-reason", "table checked")
    await console.click(".review-approve")
    await console.wait_for_selector('.review-result[data-state="ok"]', timeout=WAIT_MS)

    await chat.wait_for_selector('.docent-approval[data-state="approved"]', timeout=WAIT_MS)
    await chat.wait_for_selector(".docent-answer[data-done='1']", timeout=WAIT_MS)
    assert "emailed" in (await chat.text_content(".docent-answer") or "")
    (mail,) = world.smtp.messages
    assert mail.rcpt_to == ("legal@acme.test",) and mail.subject == "Contract comparison"
    assert "| MIT | none (AS IS) | not mentioned |" in mail.data.decode()
    decided = [e for e in world.events(conv) if isinstance(e, ApprovalDecided)]
    assert [(d.decision, d.reviewer, d.reason) for d in decided] == [("approved", "rita", "table checked")]

    status, body = world.http("GET", f"/admin/decisions?tenant={TENANT}&tool=send_email",
                              headers={"X-Admin-Key": TEST_ADMIN_KEY})  # fmt: skip
    assert status == 200
    rows = [(d["approval_id"], d["outcome"], d["reviewer"]) for d in body["decisions"]]
    assert (request.approval_id, "approved", "rita") in rows
    assert errors == []


async def test_reviewer_denies_and_the_agent_continues_without_sending(world: World, browser: Any) -> None:
    sent_before = len(world.smtp.messages)
    chat, conv = await ask_in_chat(world, browser, "deny")
    request = requested(world, conv)
    other = await open_console(world, browser, reviewer="rita")  # watches; sees ravi's decision live
    await other.wait_for_selector(
        f'.review-queue .review-item[data-id="{request.approval_id}"]', timeout=WAIT_MS
    )
    console = await open_console(world, browser, reviewer="ravi")
    await pick(console, request.approval_id)
    await console.fill(".review-decision-reason", "not to an external list")
    await console.click(".review-deny")
    await console.wait_for_selector('.review-result[data-state="ok"]', timeout=WAIT_MS)
    settled = f'.review-settled .review-item[data-id="{request.approval_id}"][data-state="denied"]'
    await other.wait_for_selector(settled, timeout=WAIT_MS)  # no reload
    assert await other.locator(f'.review-queue .review-item[data-id="{request.approval_id}"]').count() == 0
    await chat.wait_for_selector('.docent-approval[data-state="denied"]', timeout=WAIT_MS)
    await chat.wait_for_selector(".docent-answer[data-done='1']", timeout=WAIT_MS)
    assert "not sent" in (await chat.text_content(".docent-answer") or "")
    assert len(world.smtp.messages) == sent_before
    events = world.events(conv)
    assert not [i for i in events if isinstance(i, ToolIntent) and i.tool == "send_email"]  # never ran
    (told,) = [r for r in events if isinstance(r, ToolResult) and r.tool == "send_email"]
    assert told.error and "denied" in told.error and "not to an external list" in told.error
    # A second reviewer is too late, and told who decided.
    rita = world.token("rita", roles=("reviewer",))
    path = f"/api/approvals/{request.approval_id}/decision"
    status, body = world.http("POST", path, {"decision": "approve"}, rita)
    assert (status, body["by"], body["decision"]) == (409, "ravi", "denied")


async def test_a_worker_killed_between_the_decision_and_the_send_still_sends_once(
    world: World, browser: Any
) -> None:
    chat, conv = await ask_in_chat(world, browser, "approve")
    request = requested(world, conv)
    sent_before = len(world.smtp.messages)
    world.worker.kill()  # SIGKILL: no acks, no cleanup
    rita = world.token("rita", roles=("reviewer",))
    path = f"/api/approvals/{request.approval_id}/decision"
    status, body = world.http("POST", path, {"decision": "approve", "reason": "ok"}, rita)
    assert status == 200 and body["approval"]["state"] == "approved"
    await asyncio.sleep(1.0)
    assert len(world.smtp.messages) == sent_before  # no worker: nothing can send
    world.worker.start()
    await chat.wait_for_selector(".docent-answer[data-done='1']", timeout=WAIT_MS)
    await wait_until(lambda: len(world.smtp.messages) > sent_before)
    await asyncio.sleep(1.0)  # a duplicate would show up now
    assert len(world.smtp.messages) == sent_before + 1
    results = [r for r in world.events(conv) if isinstance(r, ToolResult) and r.tool == "send_email"]
    assert len(results) == 1 and results[0].error is None
    assert isinstance(world.events(conv)[-1], AnswerCompleted)


async def test_an_unanswered_request_expires_through_the_timer_and_counts_as_denied(
    world: World, browser: Any
) -> None:
    """A worker whose clock runs three days ahead (DOCENT_APPROVAL_CLOCK_OFFSET_MS): the expiry timer the
    actor schedules is due at once; the agent is told and the email never goes out."""
    sent_before = len(world.smtp.messages)
    world.worker.stop()
    world.worker.start(approval_clock_offset_ms=str(3 * 24 * 3600 * 1000))
    try:
        page = await browser.new_page()
        await page.goto(f"{world.web.http_url}/?token={world.token('alice', groups=('legal',))}")
        await page.wait_for_selector('.docent-status[data-state="connected"]', timeout=WAIT_MS)
        conv = await page.get_attribute(".docent", "data-conversation")
        await page.select_option(".docent-mode", "agent")
        await page.fill(".docent-input", f"[script:expire@{conv}] {QUESTION}")
        await page.click(".docent-send")
        await page.wait_for_selector('.docent-approval[data-state="expired"]', timeout=WAIT_MS)
        await page.wait_for_selector(".docent-answer[data-done='1']", timeout=WAIT_MS)
        assert "not sent" in (await page.text_content(".docent-answer") or "")
    finally:
        world.worker.stop()
        world.worker.start()
    request = requested(world, conv)
    record = world.ledger.get(request.approval_id)
    assert record is not None and record.state == "expired"
    events = world.events(conv)
    assert [type(e).__name__ for e in events if isinstance(e, ApprovalExpired)] == ["ApprovalExpired"]
    assert not [i for i in events if isinstance(i, ToolIntent) and i.tool == "send_email"]
    assert len(world.smtp.messages) == sent_before
    status, body = world.http("GET", f"/admin/decisions?tenant={TENANT}&outcome=expired",
                              headers={"X-Admin-Key": TEST_ADMIN_KEY})  # fmt: skip
    assert status == 200 and request.approval_id in [d["approval_id"] for d in body["decisions"]]
