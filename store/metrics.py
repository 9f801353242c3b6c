"""Prometheus metrics: the definitions, the per-stack multiprocess directory, the exposition.

    reset_multiproc_dir(path)      `docent run`, before it starts its children: an empty directory
    observe_event(event, ...)      the conversation actor, once per event it appends
    observe_first_token(...)       the actor, at a turn's first streamed token
    observe_retrieval(timings_ms)  the actor, with the Searcher's per-stage timings
    observe_fanout(key, ms, now)   the web process's hub, per live entry delivered to sockets
    observe_ingest(statuses, ...)  the ingest, per batch of documents
    observe_redis_error(exc)       store.scripts / store.redis, at every Redis failure they translate
    scrape_exposition(...)         GET /metrics: queue depths and reindex progress, read at scrape time
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
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from store import metrics_tally
from store.events import (
    AnswerCompleted,
    ApprovalDecided,
    ApprovalExpired,
    ApprovalRequested,
    Event,
    Feedback,
    LLMCompleted,
    LLMFailed,
    RetrievalDone,
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

FANOUT_LAG = Histogram(
    "docent_fanout_lag_seconds", "From a live entry's append (its stream id) to its delivery to the sockets.",
    ["stream"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)  # fmt: skip
INGEST_DOCUMENTS = Counter(
    "docent_ingest_documents", "Documents ingested, by outcome (indexed, unchanged, failed, ...).", ["status"]
)
INGEST_ENTRIES = Counter(
    "docent_ingest_entries", "Index entries the ingest embedded (not reused) and wrote.", ["kind"]
)
QUEUE_STATES = ("ready", "delayed", "dead")
REDIS_ERRORS = Counter(
    "docent_redis_errors", "Redis calls that failed, by the client's error class (ConnectionError, ...).",
    ["error"],
)  # fmt: skip

# -- quality signals (workers) ----------------------------------------------------------------------------
ANSWERS = Counter(
    "docent_answers", "Completed answers per route, and whether they cite at least one source (cited).",
    ["route", "cited"],
)  # fmt: skip
ANSWER_UNSUPPORTED = Counter(
    "docent_answer_unsupported_sentences", "Answer sentences no passage supports (post-hoc attribution).",
    ["route"],
)  # fmt: skip
ANSWER_DROPPED_CITATIONS = Counter(
    "docent_answer_dropped_citations", "[n] markers dropped: they pointed at nothing the model was given.",
    ["route"],
)  # fmt: skip
RETRIEVALS = Counter(
    "docent_retrievals", "Q&A retrievals by outcome: passages, or no_passages (nothing the user may read).",
    ["outcome"],
)  # fmt: skip
FEEDBACK = Counter("docent_feedback", "Users' ratings of answers (up, down).", ["rating"])
RATINGS = ("up", "down")
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
    for rating in RATINGS:
        FEEDBACK.labels(rating)


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
    metrics_tally.flush()  # this process's counts: in the files before they are read
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return generate_latest(registry)


# -- the actor's seams ------------------------------------------------------------------------------------


class Bound:
    """A metric's children by label values, each bound once: `metric.labels(...)` takes a lock and rebuilds
    its key on every call (about a third of a seam's CPU). In multiprocess mode each is a tally of
    prometheus-client's child (`store.metrics_tally`: counted in the process, written to the files every
    FLUSH_MS), else the child itself. Label values stay bounded."""

    def __init__(self, metric: Counter | Histogram) -> None:
        self.metric = metric
        self.children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        found = self.children.get(values)
        if found is None:
            found = self.children[values] = metrics_tally.tally_of(self.metric.labels(*values))
        return found


_LLM_DURATION, _LLM_TOKENS, _LLM_COST = Bound(LLM_DURATION), Bound(LLM_TOKENS), Bound(LLM_COST)
_TOOL_CALLS, _TOOL_DURATION, _TOOL_ERRORS = Bound(TOOL_CALLS), Bound(TOOL_DURATION), Bound(TOOL_ERRORS)
_ANSWERS, _ASK_ANSWER, _ASK_FIRST_TOKEN = Bound(ANSWERS), Bound(ASK_ANSWER), Bound(ASK_FIRST_TOKEN)
_RETRIEVAL_STAGE, _RETRIEVALS = Bound(RETRIEVAL_STAGE), Bound(RETRIEVALS)
_UNSUPPORTED, _DROPPED = Bound(ANSWER_UNSUPPORTED), Bound(ANSWER_DROPPED_CITATIONS)
_LLM_FAILURES, _FEEDBACK, _ANSWER_CACHE = Bound(LLM_FAILURES), Bound(FEEDBACK), Bound(ANSWER_CACHE)
_APPROVALS_REQUESTED, _APPROVALS_DECIDED = Bound(APPROVALS_REQUESTED), Bound(APPROVALS_DECIDED)


def observe_event(event: Event, *, now_ms: int, asked_at_ms: int = 0, route: str = "") -> None:
    """Count one appended event; `asked_at_ms` (the turn's question) times an answer. An event that moves
    no metric (most of a turn's: the question, requests, intents) costs one dictionary lookup."""
    observe = _OBSERVERS.get(type(event))
    if observe is not None:
        observe(event, now_ms, asked_at_ms, route)


def _llm_completed(event: LLMCompleted, now_ms: int, asked_at_ms: int, route: str) -> None:
    model = event.model or "unknown"
    _LLM_DURATION(model).observe(event.latency_ms / 1000)
    _LLM_TOKENS(model, "input").inc(event.tokens_in)
    _LLM_TOKENS(model, "output").inc(event.tokens_out)
    _LLM_COST(model).inc(max(0.0, event.cost_usd))


def _tool_result(event: ToolResult, now_ms: int, asked_at_ms: int, route: str) -> None:
    _TOOL_CALLS(event.tool).inc()
    _TOOL_DURATION(event.tool).observe(event.latency_ms / 1000)
    if event.error is not None:
        _TOOL_ERRORS(event.tool).inc()


def _answer(event: AnswerCompleted, now_ms: int, asked_at_ms: int, route: str) -> None:
    label = route or "unknown"
    _ANSWERS(label, "true" if event.citations else "false").inc()
    if event.unsupported:
        _UNSUPPORTED(label).inc(len(event.unsupported))
    if event.dropped_citations:
        _DROPPED(label).inc(len(event.dropped_citations))
    if asked_at_ms and route:
        _ASK_ANSWER(route).observe(max(0, now_ms - asked_at_ms) / 1000)


def _retrieval_done(event: RetrievalDone, now_ms: int, asked_at_ms: int, route: str) -> None:
    _RETRIEVALS("passages" if event.chunk_ids else "no_passages").inc()


_OBSERVERS: dict[type, Callable[[Any, int, int, str], None]] = {
    LLMCompleted: _llm_completed,
    LLMFailed: lambda event, *_: _LLM_FAILURES(event.code).inc(),
    ToolResult: _tool_result,
    ApprovalRequested: lambda event, *_: _APPROVALS_REQUESTED(event.tool).inc(),
    ApprovalDecided: lambda event, *_: _APPROVALS_DECIDED(event.decision).inc(),
    ApprovalExpired: lambda event, *_: _APPROVALS_DECIDED("expired").inc(),
    AnswerCompleted: _answer,
    RetrievalDone: _retrieval_done,
    Feedback: lambda event, *_: _FEEDBACK(event.rating).inc(),
}


def observe_first_token(route: str, *, now_ms: int, asked_at_ms: int) -> None:
    if asked_at_ms and route:
        _ASK_FIRST_TOKEN(route).observe(max(0, now_ms - asked_at_ms) / 1000)


def observe_redis_error(exc: BaseException) -> None:
    REDIS_ERRORS.labels(type(exc).__name__).inc()


def observe_fanout(key: str, entry_ms: int, now_ms: int) -> None:
    stream = "conversation" if key.startswith("conv:") else "room" if key.startswith("room:") else "other"
    FANOUT_LAG.labels(stream).observe(max(0, now_ms - entry_ms) / 1000)


def observe_ingest(statuses: Iterable[str], *, embedded: int, written: int) -> None:
    for status in statuses:
        INGEST_DOCUMENTS.labels(status).inc()
    if embedded:
        INGEST_ENTRIES.labels("embedded").inc(embedded)
    if written:
        INGEST_ENTRIES.labels("written").inc(written)


class ReindexProgress(msgspec.Struct, frozen=True, kw_only=True):
    """The running reindex job's progress, as the web process reads it from Redis at scrape time."""

    docs_done: int
    docs_total: int
    chunks_per_s: float


def scrape_exposition(depths: Mapping[tuple[str, str], int], reindex: ReindexProgress | None) -> bytes:
    """What GET /metrics reads from Redis when it is scraped: the dramatiq queues' depths
    (`docent_queue_messages{queue, state}`) and the running reindex's progress (`docent_reindex_*`)."""
    queues = GaugeMetricFamily(
        "docent_queue_messages", "Messages in the dramatiq queues: ready, delayed, dead-lettered.",
        labels=["queue", "state"],
    )  # fmt: skip
    for (queue, state), count in sorted(depths.items()):
        queues.add_metric([queue, state], count)
    running = GaugeMetricFamily(
        "docent_reindex_running", "1 while a reindex job runs.", value=int(bool(reindex))
    )
    documents = GaugeMetricFamily(
        "docent_reindex_documents", "The running reindex's documents, done and total.", labels=["state"]
    )
    rate = GaugeMetricFamily("docent_reindex_chunks_per_second", "The running reindex's embedding rate.")
    if reindex is not None:
        documents.add_metric(["done"], reindex.docs_done)
        documents.add_metric(["total"], reindex.docs_total)
        rate.add_metric([], reindex.chunks_per_s)
    registry = CollectorRegistry()
    registry.register(_Fixed([queues, running, documents, rate]))
    return generate_latest(registry)


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def families_exposition(families: list[Metric]) -> bytes:
    """Metric families built at scrape time (from Redis, not counted in this process), as exposition text."""
    registry = CollectorRegistry()
    registry.register(_Fixed(families))
    return generate_latest(registry)


def observe_answer_cache(outcome: str) -> None:
    _ANSWER_CACHE(outcome).inc()


def observe_retrieval(timings_ms: Mapping[str, float]) -> None:
    for stage, ms in timings_ms.items():
        if stage in _STAGE_SET:
            _RETRIEVAL_STAGE(stage).observe(ms / 1000)


_STAGE_SET = frozenset(STAGES)
