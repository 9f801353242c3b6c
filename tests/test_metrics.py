"""Issue 14, Metrics: `GET /metrics` of a real `docent run` stack (embedded Redis, web, worker and ingest
processes), scraped over HTTP after a real ask answered by the scripted OpenAI-compatible LLM, and parsed
with prometheus-client's own text parser. Two stacks never share a multiprocess directory."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from actors.broker import NAMESPACE
from actors.ingestion import ingest_documents
from actors.testing import ScriptedLLMThread
from index.embed import load_embedder
from index.ingest import Ingestor
from index.reindex.jobs import ReindexJob, save_job
from server.auth import ensure_admin_key, mint_token
from server.metrics_route import queue_client, read_at_scrape
from store import keys, metrics
from store.events import (
    AnswerCompleted,
    ApprovalDecided,
    ApprovalExpired,
    ApprovalRequested,
    LLMFailed,
    ToolResult,
)
from store.exceptions import Unavailable
from store.metrics import MULTIPROC_ENV
from store.metrics_tally import FLUSH_MS
from store.redis import EmbeddedRedis, free_port
from store.scripts import Call, Plan, SyncRunner
from store.settings import Settings
from tests.conftest import MODEL_CACHE
from tests.server_proc import LocalAddress, ServerProcess, StreamWriter, server_env
from tests.stack_proc import Stack
from tests.test_metrics_tally import ARRIVAL_DEADLINE_S
from tests.test_server_ws import ask, open_chat, recv, token

TENANT = "default"
POLICY = b"# Travel policy\n\nReceipts for flights go to the finance team within thirty days of travel.\n"


def _index(data_dir: Path) -> None:
    settings = Settings.from_env(
        {"DOCENT_DATA_DIR": str(data_dir), "DOCENT_MODEL_DIR": str(MODEL_CACHE), "DOCENT_EMBED_MODEL": "hash"}
    )
    with Ingestor(settings, load_embedder(settings, "hash", purpose="offline")) as ingestor:
        ingestor.ingest_document("travel-policy", data=POLICY, fmt="md", title="Travel policy")


def _scrape(stack: LocalAddress, admin_key: str | None) -> tuple[int, str, str]:
    request = urllib.request.Request(f"{stack.http_url}/metrics")
    if admin_key is not None:
        request.add_header("X-Admin-Key", admin_key)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, "", error.read().decode()


async def _ask(stack: Stack, settings: Settings) -> tuple[str, str]:
    token = mint_token(settings, tenant=TENANT, user="alice-secret-user")
    async with connect(f"{stack.ws_url}?token={token}", open_timeout=10) as ws:
        await ws.send(json.dumps({"type": "hello"}))
        ready = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert ready["type"] == "ready", ready
        ask = {"type": "ask", "text": "where do flight receipts go?", "mode": "qa", "client_message_id": "m1"}
        await ws.send(json.dumps(ask))
        while True:
            frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 60))
            if frame.get("type") == "event" and frame["event"]["type"] in {"answer_completed", "turn_failed"}:
                return str(frame["event"]["type"]), str(ready["conversation_id"])


def _scrape_worker_counts(stack: LocalAddress, admin_key: str) -> tuple[int, str, str]:
    """A scrape that shows the worker's counts of the answered ask: a worker writes what it counted to the
    multiprocess files every FLUSH_MS (`store.metrics_tally`), so a scrape right after the answer may be
    up to that much behind it."""
    deadline = time.monotonic() + ARRIVAL_DEADLINE_S
    while True:
        status, content_type, text = _scrape(stack, admin_key)
        answers = _samples(text).get("docent_ask_answer_seconds", [])
        if status != 200 or _value(answers, "docent_ask_answer_seconds_count", route="qa") >= 1:
            return status, content_type, text
        assert time.monotonic() < deadline, f"the worker's counts were not written in {ARRIVAL_DEADLINE_S} s"
        time.sleep(FLUSH_MS / 1000 / 5)


def _samples(text: str) -> dict[str, list[Any]]:
    return {family.name: list(family.samples) for family in text_string_to_metric_families(text)}


def _value(samples: list[Any], name: str, **labels: str) -> float:
    return sum(
        s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_metrics_of_web_and_worker_after_a_real_ask(tmp_path: Path, stacks: list[Stack]) -> None:
    data_dir = tmp_path / "stack"
    _index(data_dir)
    with ScriptedLLMThread() as llm:  # no script: it answers from the passages it is given, streaming
        stack = Stack(data_dir, llm_backend="openai", llm_url=llm.url, llm_max_retries="0")
        stacks.append(stack.start())
        settings = Settings.from_env({"DOCENT_DATA_DIR": str(data_dir)})
        admin_key = ensure_admin_key(settings)

        status, _, body = _scrape(stack, None)
        assert status == 401 and "docent_" not in body  # restricted: the admin key, or DOCENT_METRICS_ALLOW
        assert _scrape(stack, "not-the-key")[0] == 401

        outcome, conversation = asyncio.run(_ask(stack, settings))
        assert outcome == "answer_completed"
        status, content_type, text = _scrape_worker_counts(stack, admin_key)
        assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    families = _samples(text)

    # web process: requests by route template and status, open sockets by endpoint
    http = families["docent_http_requests"]
    assert _value(http, "docent_http_requests_total", route="/metrics", method="GET", status="401") == 2
    assert _value(http, "docent_http_requests_total", route="/readyz", status="200") >= 1
    assert "docent_websockets_open" in families
    assert {s.labels["endpoint"] for s in families["docent_websockets_open"]} <= {"/ws/chat"}
    # worker process (aggregated through the multiprocess directory): the ask, retrieval, the LLM
    assert _value(families["docent_ask_answer_seconds"], "docent_ask_answer_seconds_count", route="qa") == 1
    first = families["docent_ask_first_token_seconds"]
    assert _value(first, "docent_ask_first_token_seconds_count", route="qa") == 1
    stages = families["docent_retrieval_stage_seconds"]
    for stage in ("embed", "ann", "bm25", "fuse", "catalog"):
        assert _value(stages, "docent_retrieval_stage_seconds_count", stage=stage) == 1, stage
    llm_samples = families["docent_llm_request_duration_seconds"]
    models = {s.labels["model"] for s in llm_samples if s.name.endswith("_count")}
    assert len(models) == 1
    (model,) = models
    assert _value(llm_samples, "docent_llm_request_duration_seconds_count", model=model) == 1
    tokens = families["docent_llm_tokens"]
    assert _value(tokens, "docent_llm_tokens_total", model=model, direction="input") > 0
    assert "docent_llm_cost_usd" in families
    decided = families["docent_approvals_decided"]  # the bounded outcomes exist before any decision
    outcomes = {s.labels["outcome"] for s in decided if s.name.endswith("_total")}
    assert outcomes == {"approved", "denied", "expired"}
    # nothing of the tenant's: no user, conversation, question or document text in any label or sample
    for secret in ("alice-secret-user", conversation, "flight", "receipts", "travel-policy"):
        assert secret not in text, secret


def test_two_stacks_never_share_a_metrics_directory(tmp_path: Path, stacks: list[Stack]) -> None:
    shared = tmp_path / "shared-metrics"  # a caller's own setting is overridden by each stack's
    a, b = Stack(tmp_path / "a"), Stack(tmp_path / "b")
    for stack in (a, b):
        stack.env[MULTIPROC_ENV] = str(shared)
        stale = stack.data_dir / "metrics" / "counter_999999.db"
        stale.parent.mkdir(parents=True)
        stale.write_bytes(b"stale")
        stacks.append(stack.start())
    for stack in (a, b):
        directory = stack.data_dir / "metrics"
        assert not (directory / "counter_999999.db").exists()  # cleaned at start
        assert any(directory.glob("*.db"))  # the web process writes its samples there
        key = ensure_admin_key(Settings.from_env({"DOCENT_DATA_DIR": str(stack.data_dir)}))
        assert _scrape(stack, key)[0] == 200
    assert not shared.exists()
    pids_a = {p.name for p in (a.data_dir / "metrics").glob("*.db")}
    pids_b = {p.name for p in (b.data_dir / "metrics").glob("*.db")}
    assert pids_a.isdisjoint(pids_b)  # file names carry the writer's pid: each stack's own processes


def test_the_actor_seams_count_tools_approvals_and_failures() -> None:
    """The events the actor appends, counted in this process's registry (no multiprocess directory)."""
    before = _seam_counts()
    failed_call = ToolResult(step=1, call_id="c", tool="send_email", idempotency_key="k", error="smtp: no")
    metrics.observe_event(failed_call, now_ms=0)
    metrics.observe_event(
        ApprovalRequested(approval_id="a", step=1, call_id="c", tool="send_email", args={}, args_hash="h"),
        now_ms=0,
    )
    metrics.observe_event(ApprovalDecided(approval_id="a", decision="denied", reviewer="r"), now_ms=0)
    metrics.observe_event(ApprovalExpired(approval_id="b"), now_ms=0)
    metrics.observe_event(LLMFailed(step=1, code="llm_timeout"), now_ms=0)
    metrics.observe_event(AnswerCompleted(text="x"), now_ms=5_000, asked_at_ms=1_000, route="agent")
    after = _seam_counts()
    assert {k: after[k] - before[k] for k in before} == dict.fromkeys(before, 1.0)
    assert _sample("docent_ask_answer_seconds_bucket", route="agent", le="5.0") >= 1
    families = {f.name for f in text_string_to_metric_families(metrics.exposition().decode())}
    assert {"docent_tool_calls", "docent_tool_errors", "docent_approvals_requested"} <= families


def _seam_counts() -> dict[str, float]:
    return {
        "calls": _sample("docent_tool_calls_total", tool="send_email"),
        "errors": _sample("docent_tool_errors_total", tool="send_email"),
        "requested": _sample("docent_approvals_requested_total", tool="send_email"),
        "denied": _sample("docent_approvals_decided_total", outcome="denied"),
        "expired": _sample("docent_approvals_decided_total", outcome="expired"),
        "failed": _sample("docent_llm_failures_total", code="llm_timeout"),
    }


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_an_allowed_scraper_needs_no_key_and_a_bad_allow_setting_stops_the_web_process(
    redis_url: str, tmp_path: Path
) -> None:
    allowed = server_env(redis_url, tmp_path / "a", metrics_allow="10.0.0.0/8, 127.0.0.1")
    with ServerProcess(allowed, app="server.app:create_app") as web:
        status, _, text = _scrape(web, None)
    assert status == 200
    assert "docent_http_requests" in {f.name for f in text_string_to_metric_families(text)}
    others = server_env(redis_url, tmp_path / "b", metrics_allow="10.0.0.0/8")
    with ServerProcess(others, app="server.app:create_app") as web:
        assert _scrape(web, None)[0] == 401
    bad = ServerProcess(server_env(redis_url, tmp_path / "c", metrics_allow="not-a-network"))
    with pytest.raises(RuntimeError, match="server exited"):
        bad.start()


async def test_queue_depths_fanout_lag_and_ingest_are_exposed(redis_url: str, tmp_path: Path) -> None:
    """A real web process: an ask leaves an `advance` on the conversation queue (no worker here), a live
    delta reaches the socket (fan-out lag), and the queues' depths are read at scrape time."""
    env = server_env(redis_url, tmp_path / "web", metrics_allow="127.0.0.1")
    client = redis.Redis.from_url(redis_url)
    job = ReindexJob(id="job-metrics", model="hash", new_version="v2", old_version="v1", chunk_tokens=256,
                     chunk_overlap=32, rechunk=False, status="building", docs_total=60, docs_done=15,
                     chunks_per_s=27.5)  # fmt: skip
    with ServerProcess(env, app="server.app:create_app") as web:
        ws, ready = await open_chat(web, token(web, "quinn"))
        await ws.send(ask("how deep is the queue?", "q1"))
        assert (await recv(ws))["type"] == "accepted"
        StreamWriter(client, ready["conversation_id"]).delta("hi", 1)
        assert (await recv(ws))["type"] == "delta"
        await ws.close()
        idle = _samples((await asyncio.to_thread(_scrape, web, None))[2])
        assert _value(idle["docent_reindex_running"], "docent_reindex_running") == 0
        save_job(client, job, publish=False)
        client.set(keys.REINDEX_CURRENT, job.id)
        try:
            status, _, text = await asyncio.to_thread(_scrape, web, None)
        finally:
            client.delete(keys.REINDEX_CURRENT, keys.reindex_job(job.id))
    assert status == 200
    families = _samples(text)
    queues = families["docent_queue_messages"]
    assert {(s.labels["queue"], s.labels["state"]) for s in queues} == {
        (q, state)
        for q in ("conversation", "approvals", "ingest", "reindex")
        for state in ("ready", "delayed", "dead")
    }
    assert _value(queues, "docent_queue_messages", queue="conversation", state="ready") >= 1
    assert _value(families["docent_reindex_running"], "docent_reindex_running") == 1
    reindex = families["docent_reindex_documents"]
    assert _value(reindex, "docent_reindex_documents", state="done") == 15
    assert _value(reindex, "docent_reindex_documents", state="total") == 60
    assert _value(families["docent_reindex_chunks_per_second"], "docent_reindex_chunks_per_second") == 27.5
    lag = families["docent_fanout_lag_seconds"]
    assert _value(lag, "docent_fanout_lag_seconds_count", stream="conversation") >= 1


def test_ingest_progress_is_counted(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"DOCENT_DATA_DIR": str(tmp_path), "DOCENT_MODEL_DIR": str(MODEL_CACHE), "DOCENT_EMBED_MODEL": "hash"}
    )
    before = _sample("docent_ingest_documents_total", status="indexed")
    embedded = _sample("docent_ingest_entries_total", kind="embedded")
    outcomes = ingest_documents(settings, [("travel-policy", {"data": POLICY, "fmt": "md"})])
    assert [o.status for o in outcomes] == ["indexed"]
    assert _sample("docent_ingest_documents_total", status="indexed") == before + 1
    assert outcomes[0].embedded > 0
    assert _sample("docent_ingest_entries_total", kind="embedded") == embedded + outcomes[0].embedded


def test_redis_failures_are_counted_by_error_class() -> None:
    before = _sample("docent_redis_errors_total", error="ConnectionError")
    runner = SyncRunner(redis.Redis(port=free_port(), socket_connect_timeout=0.2), unavailable=Unavailable)
    with pytest.raises(Unavailable):
        runner.run(_ping())
    assert _sample("docent_redis_errors_total", error="ConnectionError") == before + 1


def _ping() -> Plan[Any]:
    return (yield Call(lambda r: r.ping()))


async def test_queue_depths_come_from_the_broker_redis_when_it_is_separate(
    redis_url: str, tmp_path: Path
) -> None:
    broker = EmbeddedRedis(tmp_path / "broker").start()  # its own choice: chosen again if taken first
    data = aredis.Redis.from_url(redis_url)
    try:
        redis.Redis.from_url(broker.url).rpush(f"{NAMESPACE}:conversation", "m1", "m2")
        separate = Settings.from_env({"DOCENT_REDIS_URL": redis_url, "DOCENT_BROKER_URL": broker.url})
        depths = _samples((await read_at_scrape(data, queue_client(separate, data))).decode())
        ready = {
            s.labels["queue"]: s.value
            for s in depths["docent_queue_messages"]
            if s.labels["state"] == "ready"
        }
        assert ready["conversation"] == 2
        rabbit = Settings.from_env({"DOCENT_REDIS_URL": redis_url, "DOCENT_BROKER_URL": "amqp://guest@x/"})
        assert queue_client(rabbit, data) is None  # RabbitMQ's own metrics tell its depths
    finally:
        await data.aclose()
        broker.stop()
