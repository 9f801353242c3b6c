"""Prometheus metrics: the definitions, the per-stack multiprocess directory, the exposition.

    reset_multiproc_dir(path)      `docent run`, before it starts its children: an empty directory
    observe_event(event, ...)      the conversation actor, once per event it appends
    observe_first_token(...)       the actor, at a turn's first streamed token
    observe_retrieval(timings_ms)  the actor, with the Searcher's per-stage timings
    exposition() -> bytes          the web process's GET /metrics (text format 0.0.4)

Every process of a stack (web, the workers' forked processes) writes its samples to files in
`PROMETHEUS_MULTIPROC_DIR` (prometheus-client's multiprocess mode), which `docent run` sets for its
children to `{data dir}/metrics` and empties when it starts — always, even when the variable was set in
its own environment, so two stacks (two data dirs, each locked by its owner) never share one directory.
The web process's `/metrics` aggregates the directory. The variable is read when prometheus-client is
first imported: without it (a web process started alone, unit tests) each process counts in its own
default registry, and `/metrics` shows the web process's samples only.

Labels are bounded: route templates, socket endpoints, routes (`qa`, `agent`), stages, model and tool
names from the configuration, outcomes and error codes. Never a conversation, user, tenant or query.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from store.events import (
    AnswerCompleted,
    ApprovalDecided,
    ApprovalExpired,
    ApprovalRequested,
    Event,
    LLMCompleted,
    LLMFailed,
    ToolResult,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STAGES = ("embed", "ann", "bm25", "fuse", "catalog", "rerank", "total")
# Seconds: 5 ms (a cached retrieval stage) to 2 min (a slow agent run on the local CPU model).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# -- web --------------------------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "docent_http_requests", "HTTP requests by route template, method and status.",
    ["route", "method", "status"],
)  # fmt: skip
HTTP_DURATION = Histogram(
    "docent_http_request_duration_seconds", "HTTP request handling time by route template.", ["route"],
    buckets=LATENCY_BUCKETS,
)  # fmt: skip
SOCKETS_OPEN = Gauge(
    "docent_websockets_open", "WebSocket connections open, by endpoint.", ["endpoint"],
    multiprocess_mode="livesum",
)  # fmt: skip

# -- workers ----------------------------------------------------------------------------------------------
ASK_FIRST_TOKEN = Histogram(
    "docent_ask_first_token_seconds", "From the ask to the answer's first streamed token, per route.",
    ["route"], buckets=LATENCY_BUCKETS,
)  # fmt: skip
ASK_ANSWER = Histogram(
    "docent_ask_answer_seconds", "From the ask to the completed answer, per route.", ["route"],
    buckets=LATENCY_BUCKETS,
)  # fmt: skip
RETRIEVAL_STAGE = Histogram(
    "docent_retrieval_stage_seconds", "Retrieval latency per stage (embed, ann, bm25, fuse, catalog, ...).",
    ["stage"], buckets=LATENCY_BUCKETS,
)  # fmt: skip
LLM_DURATION = Histogram(
    "docent_llm_request_duration_seconds", "One LLM call, request to completion, per model.", ["model"],
    buckets=LATENCY_BUCKETS,
)  # fmt: skip
LLM_TOKENS = Counter("docent_llm_tokens", "LLM tokens per model and direction.", ["model", "direction"])
LLM_COST = Counter("docent_llm_cost_usd", "LLM cost in US dollars per model.", ["model"])
LLM_FAILURES = Counter("docent_llm_failures", "Failed LLM calls by error code.", ["code"])
TOOL_CALLS = Counter("docent_tool_calls", "Tool calls run, per tool.", ["tool"])
TOOL_ERRORS = Counter("docent_tool_errors", "Tool calls that ended in an error, per tool.", ["tool"])
TOOL_DURATION = Histogram(
    "docent_tool_call_duration_seconds", "Tool call latency per tool.", ["tool"], buckets=LATENCY_BUCKETS
)
APPROVALS_REQUESTED = Counter("docent_approvals_requested", "Approvals requested, per tool.", ["tool"])
APPROVALS_DECIDED = Counter(
    "docent_approvals_decided", "Approvals settled by outcome (approved, denied, expired).", ["outcome"]
)
APPROVAL_OUTCOMES = ("approved", "denied", "expired")
ANSWER_CACHE = Counter(
    "docent_answer_cache_lookups",
    "Answer cache lookups by outcome (hit, miss, refused_guard, refused_access, stale, error).", ["outcome"],
)  # fmt: skip
# Importing this module writes nothing (every metric has labels): `docent run`'s own process imports it,
# and must not touch a PROMETHEUS_MULTIPROC_DIR it inherited from its caller.


def expose_known_labels() -> None:
    """The web process at start: the bounded outcomes are exposed at 0 before the first decision."""
    for outcome in APPROVAL_OUTCOMES:
        APPROVALS_DECIDED.labels(outcome)


def multiproc_dir(data_path: Path) -> Path:
    return data_path / "metrics"


def reset_multiproc_dir(directory: Path) -> Path:
    """An empty directory for this stack's samples (a previous run's files are dropped)."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700, parents=True)
    return directory


_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w*_(\d+)\.db$")


def forget_dead_processes(directory: str | None = None) -> None:
    """Drop the live gauges of processes that are gone (a restarted web process's open sockets)."""
    directory = directory or os.environ.get(MULTIPROC_ENV)
    if not directory or not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        match = _LIVE_GAUGE_FILE.match(name)
        if match and not _alive(int(match.group(1))):
            multiprocess.mark_process_dead(int(match.group(1)), directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def exposition() -> bytes:
    """Every process's samples when in multiprocess mode, else this process's."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return generate_latest(registry)


# -- the actor's seams ------------------------------------------------------------------------------------


def observe_event(event: Event, *, now_ms: int, asked_at_ms: int = 0, route: str = "") -> None:
    """Count one appended event; `asked_at_ms` (the turn's question) times an answer."""
    match event:
        case LLMCompleted():
            model = event.model or "unknown"
            LLM_DURATION.labels(model).observe(event.latency_ms / 1000)
            LLM_TOKENS.labels(model, "input").inc(event.tokens_in)
            LLM_TOKENS.labels(model, "output").inc(event.tokens_out)
            LLM_COST.labels(model).inc(max(0.0, event.cost_usd))
        case LLMFailed():
            LLM_FAILURES.labels(event.code).inc()
        case ToolResult():
            TOOL_CALLS.labels(event.tool).inc()
            TOOL_DURATION.labels(event.tool).observe(event.latency_ms / 1000)
            if event.error is not None:
                TOOL_ERRORS.labels(event.tool).inc()
        case ApprovalRequested():
            APPROVALS_REQUESTED.labels(event.tool).inc()
        case ApprovalDecided():
            APPROVALS_DECIDED.labels(event.decision).inc()
        case ApprovalExpired():
            APPROVALS_DECIDED.labels("expired").inc()
        case AnswerCompleted() if asked_at_ms and route:
            ASK_ANSWER.labels(route).observe(max(0, now_ms - asked_at_ms) / 1000)
        case _:
            pass


def observe_first_token(route: str, *, now_ms: int, asked_at_ms: int) -> None:
    if asked_at_ms and route:
        ASK_FIRST_TOKEN.labels(route).observe(max(0, now_ms - asked_at_ms) / 1000)


def observe_answer_cache(outcome: str) -> None:
    ANSWER_CACHE.labels(outcome).inc()


def observe_retrieval(timings_ms: Mapping[str, float]) -> None:
    for stage, ms in timings_ms.items():
        if stage in STAGES:
            RETRIEVAL_STAGE.labels(stage).observe(ms / 1000)
