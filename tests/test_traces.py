"""GET /admin/conversations/{id}/trace: each turn's steps from the durable log, with totals; admin only."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from store.events import LLMCompleted, LLMRequested, ToolIntent, ToolResult, UserMessage
from store.log import ConversationLog
from tests.server_proc import TEST_ADMIN_KEY, ServerProcess, server_env

PROMPT = {"role": "user", "content": "x"}


def get(url: str, key: str) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"X-Admin-Key": key})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_trace_groups_steps_by_turn_with_totals(redis_url: str, tmp_path: Path) -> None:
    log = ConversationLog.from_url(redis_url)  # a flushed Redis: no other test's conversation
    lease = log.acquire("conv-trace", "test")
    log.append(lease, [
        UserMessage(turn=1, text="compare and email"),
        LLMRequested(turn=1, step=0, model="m", prompt_hash="p0", messages=[PROMPT]),
        LLMCompleted(turn=1, step=0, model="m", prompt_hash="p0", tokens_in=100, tokens_out=20,
                     cost_usd=0.01, latency_ms=300.0),
        ToolIntent(turn=1, step=0, call_id="c1", tool="read_document", args={"doc_id": "a"},
                   idempotency_key="k"),
        ToolResult(turn=1, step=0, call_id="c1", tool="read_document", idempotency_key="k", result="...",
                   latency_ms=12.0),
        LLMCompleted(turn=1, step=1, model="m", prompt_hash="p1", text="done", tokens_in=150, tokens_out=30,
                     cost_usd=0.02, latency_ms=400.0),
    ])  # fmt: skip
    log.release(lease)
    log.close()

    with ServerProcess(server_env(redis_url, tmp_path)) as web:
        status, body = get(f"{web.http_url}/admin/conversations/conv-trace/trace", TEST_ADMIN_KEY)
        assert status == 200
        (turn,) = body["turns"]
        assert [s["type"] for s in turn["steps"]][:2] == ["user_message", "llm_requested"]
        assert turn["steps"][1]["messages"] == [PROMPT]  # the prompt itself
        totals = turn["totals"]
        assert (totals["llm_calls"], totals["tool_calls"]) == (2, 1)
        assert (totals["tokens_in"], totals["tokens_out"]) == (250, 50)
        assert abs(totals["cost_usd"] - 0.03) < 1e-9 and totals["llm_ms"] == 700.0

        assert get(f"{web.http_url}/admin/conversations/conv-trace/trace", "wrong")[0] == 401
        assert get(f"{web.http_url}/admin/conversations/nope/trace", TEST_ADMIN_KEY)[0] == 404
        assert get(f"{web.http_url}/admin/conversations/conv-trace/trace?turn=x", TEST_ADMIN_KEY)[0] == 400
