"""The operator console (GET /admin) in a real headless Chromium against the real web process.

Real Redis (conftest), a small "hash" index built with the Ingestor, a conversation log written the way the
actor writes it, approval decisions in the real ledger, and a real reindex worker (`python -m
actors.reindex`) that drives a job started from the page to its cutover while the page follows it live
over /ws/admin. Skipped when /usr/bin/chromium is absent.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from index.embed import load_embedder
from index.ingest import Ingestor
from index.reindex.alias import read_alias
from store.approvals import ApprovalLedger, ApprovalRecord
from store.events import (
    AnswerCompleted,
    Decision,
    LLMCompleted,
    LLMRequested,
    ToolIntent,
    ToolResult,
    UserMessage,
)
from store.keys import REINDEX_CURRENT
from store.log import ConversationLog
from store.redis import sync_client
from store.settings import Settings
from tests.conftest import MODEL_CACHE, REPO
from tests.server_proc import TEST_ADMIN_KEY, ServerProcess, server_env
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS
from tests.test_reindex import write_golden
from tests.test_reindex_kill import worker_env

WAIT_MS = 45_000  # a headless Chromium page across the web process and Redis, on a loaded machine
JOB_DONE_WAIT_MS = 30_000
KEY_STORAGE = "docent:admin-key"
XSS = '<img src=x onerror="window.__pwned=1">'
SYSTEM_PROMPT = "You are Docent. Answer from the sources only."

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (make browser)"),
]

DOCS = {
    "kb/vpn": "To reach internal systems from home, install the tunnel client and sign in with your key.",
    "kb/parking": "Employees can reserve a spot in the garage through the facilities app.",
    "kb/expenses": "Claims for business spending must include the original receipt within thirty days.",
}


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    playwright_api = pytest.importorskip("playwright.async_api")
    async with playwright_api.async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


def build_index(settings: Settings) -> str:
    embedder = load_embedder(settings, "hash", purpose="offline")
    with Ingestor(settings, embedder) as ingestor:
        for doc_id, text in DOCS.items():
            ingestor.ingest_document(doc_id, data=text.encode(), fmt="txt", title=doc_id.split("/")[-1])
        return ingestor.version


def write_conversation(redis_url: str, conv: str) -> None:
    log = ConversationLog.from_url(redis_url)
    lease = log.acquire(conv, "test")
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": XSS}]
    log.append(lease, [
        UserMessage(turn=1, text=XSS, user="alice", tenant="default"),
        LLMRequested(turn=1, step=0, model="gpt-test", prompt_hash="p0", messages=messages,
                     tools=("read_document",)),
        LLMCompleted(turn=1, step=0, model="gpt-test", prompt_hash="p0", tokens_in=100, tokens_out=20,
                     cost_usd=0.01, latency_ms=300.0),
        ToolIntent(turn=1, step=0, call_id="c1", tool="read_document", args={"doc_id": "kb/vpn"},
                   idempotency_key="k1"),
        ToolResult(turn=1, step=0, call_id="c1", tool="read_document", idempotency_key="k1",
                   result="install the tunnel client", latency_ms=12.0),
        LLMCompleted(turn=1, step=1, model="gpt-test", prompt_hash="p1", text="Use the tunnel client [1].",
                     tokens_in=150, tokens_out=30, cost_usd=0.02, latency_ms=400.0),
        AnswerCompleted(turn=1, text="Use the tunnel client [1]."),
        UserMessage(turn=2, text="thanks", user="alice", tenant="default"),
    ])  # fmt: skip
    log.release(lease)
    log.close()


def record_decisions(redis_url: str) -> None:
    ledger = ApprovalLedger.from_url(redis_url)
    now = int(time.time() * 1000)
    outcomes: tuple[tuple[str, Decision], ...] = (("send_email", "approved"), ("post_webhook", "denied"))
    for n, (tool, decision) in enumerate(outcomes):
        args = msgspec.json.encode({"n": n}).decode()
        ledger.create(ApprovalRecord(
            approval_id=f"ap-{n}", conv_id="conv-trace", tenant="default", room="general", tool=tool,
            args=args, args_hash=hashlib.sha256(args.encode()).hexdigest(), requested_by="alice",
            created_ms=now - 1000, expires_ms=now + 3_600_000,
        ))  # fmt: skip
        ledger.decide(f"ap-{n}", decision, "bob", reason=f"{decision} in the test", now_ms=now)
    ledger.close()


async def text(page: Any, selector: str) -> str:
    return str(await page.locator(selector).first.text_content() or "")


async def test_admin_console_signs_in_lists_versions_traces_uploads_and_follows_a_reindex(
    browser: Any, redis_url: str, tmp_path: Path
) -> None:
    golden = write_golden(tmp_path / "golden" / "office")  # judges kb/vpn, kb/parking, kb/expenses too
    env = server_env(
        redis_url, tmp_path / "data", model_dir=str(MODEL_CACHE), embed_model="hash", golden_demo="false",
        golden_dirs=str(golden), reindex_lease_ms="1500", reindex_slice_s="2",
        broker_heartbeat_timeout_ms="1500",
    )  # fmt: skip
    settings = Settings.from_env(env)
    version = build_index(settings)
    write_conversation(redis_url, "conv-trace")
    record_decisions(redis_url)
    client = sync_client(redis_url)
    with ServerProcess(env, app="server.app:create_app") as web:
        with urllib.request.urlopen(f"{web.http_url}/admin", timeout=10) as response:
            csp = response.headers["Content-Security-Policy"]
            assert "script-src 'self' 'nonce-" in csp and "unsafe-inline" not in csp
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        # Chromium logs every 4xx answer as "Failed to load resource"; the test asks for those on purpose.
        page.on(
            "console",
            lambda m: (
                errors.append(m.text)
                if m.type == "error" and not m.text.startswith("Failed to load resource")
                else None
            ),
        )
        await page.goto(f"{web.http_url}/admin")

        # -- the key: asked for, a wrong one refused, the right one kept for the tab -------------------
        await page.wait_for_selector(".admin-key-input", state="visible", timeout=WAIT_MS)
        assert await page.locator(".admin-console").is_hidden()
        await page.fill(".admin-key-input", "wrong-key")
        await page.click(".admin-key-save")
        await page.wait_for_function(
            "() => document.querySelector('.admin-key-error').textContent.includes('rejected')",
            timeout=WAIT_MS,
        )
        assert await page.locator(".admin-console").is_hidden()
        assert await page.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") is None

        await page.fill(".admin-key-input", TEST_ADMIN_KEY)
        await page.click(".admin-key-save")
        await page.wait_for_selector(".admin-console", state="visible", timeout=WAIT_MS)
        assert await page.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") == TEST_ADMIN_KEY
        assert await text(page, ".admin-key-error") == ""

        # -- versions: the active one and its query model ------------------------------------------------
        assert await text(page, ".admin-alias-version") == version
        assert (await text(page, ".admin-alias-model")).startswith("hash")
        row = page.locator(f".admin-versions tr[data-version='{version}']")
        assert await row.get_attribute("data-active") == "1"
        assert "active alias" in await row.text_content()
        assert await row.locator(".admin-retire").is_disabled()  # the active version cannot be retired
        assert await page.locator(".admin-rollback").is_disabled()  # nothing to return to yet
        await page.wait_for_selector('.admin-ws[data-state="connected"]', timeout=WAIT_MS)

        # A reload signs in from sessionStorage without asking again.
        await page.reload()
        await page.wait_for_selector(".admin-console", state="visible", timeout=WAIT_MS)
        assert await text(page, ".admin-alias-version") == version

        # -- run trace: turns, steps, the prompt collapsed, totals; server text stays text ---------------
        await page.fill(".admin-trace-conv", "conv-trace")
        await page.click(".admin-trace-load")
        await page.wait_for_selector(".admin-turn[data-turn='1']", timeout=WAIT_MS)
        assert await page.locator(".admin-turn").count() == 2
        turn = page.locator(".admin-turn[data-turn='1']")
        types = await turn.locator(".admin-step").evaluate_all("els => els.map(e => e.dataset.type)")
        assert types == ["user_message", "llm_requested", "llm_completed", "tool_intent", "tool_result",
                         "llm_completed", "answer_completed"]  # fmt: skip
        totals = await text(page, ".admin-turn[data-turn='1'] .admin-turn-totals")
        assert "2 LLM calls" in totals and "250 in / 50 out tokens" in totals and "$0.0300" in totals
        assert "LLM 700 ms" in totals and "1 tool call" in totals
        llm = turn.locator(".admin-step[data-type='llm_completed']").first
        assert "gpt-test" in await llm.text_content() and "100 in / 20 out" in await llm.text_content()
        prompt = turn.locator("details.admin-prompt")
        assert await prompt.get_attribute("open") is None  # collapsed until asked for
        assert not await prompt.locator(".admin-prompt-message").first.is_visible()
        await prompt.locator("summary").click()
        assert (
            await prompt.locator(".admin-prompt-message[data-role='system'] pre").text_content()
            == SYSTEM_PROMPT
        )
        assert XSS in await prompt.text_content()
        assert "read_document" in await text(page, ".admin-step[data-type='tool_intent']")
        assert "kb/vpn" in await text(page, ".admin-step[data-type='tool_intent'] pre")
        assert await page.locator(".admin-trace img").count() == 0
        assert await page.evaluate("window.__pwned") is None
        assert "2 turn(s)" in await text(page, ".admin-trace-grand")

        await page.fill(".admin-trace-conv", "no-such-conv")
        await page.click(".admin-trace-load")
        await page.wait_for_selector(".admin-trace-msg[data-error='1']", timeout=WAIT_MS)
        assert await page.locator(".admin-turn").count() == 0

        # -- approvals audit, filtered by tool -----------------------------------------------------------
        await page.click(".admin-audit-load")
        await page.wait_for_selector(".admin-audit tr[data-approval='ap-1']", timeout=WAIT_MS)
        assert await page.locator(".admin-audit tbody tr").count() == 2
        await page.fill(".admin-audit-tool", "send_email")
        await page.click(".admin-audit-load")
        await page.wait_for_function(
            "() => document.querySelectorAll('.admin-audit tbody tr').length === 1", timeout=WAIT_MS
        )
        only = page.locator(".admin-audit tbody tr")
        assert await only.get_attribute("data-outcome") == "approved"
        assert "bob" in await only.text_content()

        # -- upload: the job id of the queued ingest -------------------------------------------------------
        await page.set_input_files(
            ".admin-upload-file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}]
        )
        await page.fill(".admin-upload-tenant", "acme")
        await page.click(".admin-upload-send")
        await page.wait_for_selector(".admin-upload-job", timeout=WAIT_MS)
        assert (await text(page, ".admin-upload-job")).strip() not in ("", "(none)")
        assert (settings.data_path / "uploads" / "acme" / "notes.txt").read_bytes() == b"hello"

        # -- reindex: started from the page, followed live to the cutover, then rolled back ---------------
        await page.select_option(".admin-rx-model", "hash")
        await page.click(".admin-rx-start")
        await page.wait_for_selector(".admin-job[data-job-id]", state="visible", timeout=WAIT_MS)
        current: Any = client.get(REINDEX_CURRENT)
        job_id = current.decode()
        assert await page.get_attribute(".admin-job", "data-job-id") == job_id
        assert await text(page, ".admin-job-id") == job_id
        assert await page.locator(f".admin-jobs [data-job-id='{job_id}']").count() == 1
        assert await page.locator(".admin-job-cancel").is_visible()
        # A second start while one runs is refused, and the page says so.
        await page.click(".admin-rx-start")
        await page.wait_for_selector(".admin-rx-msg[data-error='1']", timeout=WAIT_MS)
        assert "refused" in await text(page, ".admin-rx-msg")

        worker = subprocess.Popen(
            [sys.executable, "-m", "actors.reindex"], cwd=REPO, env=worker_env(settings),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await page.wait_for_selector(".admin-job[data-status='done']", timeout=JOB_DONE_WAIT_MS)
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(10)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        assert (await text(page, ".admin-job-docs")).startswith(f"{len(DOCS)} / {len(DOCS)} (100%)")
        assert await page.locator(".admin-job-cancel").is_hidden()
        # The gate report: the same model on both sides, so every metric holds.
        assert await page.locator(".admin-gate").is_visible()
        assert await text(page, ".admin-gate-verdict") == "passed"
        assert "office" in await text(page, ".admin-gate-summary")
        assert await page.locator(".admin-gate-deltas tbody tr").count() == 4  # 2 modes x 2 metrics
        alias = read_alias(settings)
        assert alias is not None and alias.version != version and alias.previous == version
        await page.wait_for_function(
            f"() => document.querySelector('.admin-alias-version').textContent === '{alias.version}'",
            timeout=WAIT_MS,
        )
        assert await page.locator(".admin-versions tbody tr").count() == 2

        rollback = page.locator(".admin-rollback")
        assert await rollback.is_enabled()
        await rollback.click()
        assert await rollback.get_attribute("data-armed") == "1"  # a second click confirms
        await rollback.click()
        await page.wait_for_function(
            f"() => document.querySelector('.admin-alias-version').textContent === '{version}'",
            timeout=WAIT_MS,
        )
        assert read_alias(settings).version == version  # type: ignore[union-attr]

        # -- a key that stops working signs the page out ---------------------------------------------------
        await page.evaluate(f"sessionStorage.setItem('{KEY_STORAGE}', 'revoked')")
        await page.reload()
        await page.wait_for_function(
            "() => document.querySelector('.admin-key-error').textContent.includes('rejected')",
            timeout=WAIT_MS,
        )
        assert await page.locator(".admin-console").is_hidden()
        assert errors == []
    client.close()
