"""Reindex job records in Redis: their shape, the one-at-a-time slot, start, cancel and the end of a job.

    reindex:job:<id>      the job (msgspec JSON), rewritten on every progress step
    reindex:current       the id of the job that runs (at most one)
    reindex:jobs          sorted set: job ids by creation time
    reindex:cancel:<id>   set by an admin, read by the worker between documents
    reindex:events        stream: every saved job (what /ws/admin relays)

The key names are store.keys' (the web process reads them through it too).

No model, no index: the web process uses this module for the admin API.
"""

from __future__ import annotations

import secrets
import time
from contextlib import suppress
from typing import Literal

import msgspec
import redis

from index.reindex.audit import audit
from index.types import EMBEDDER_NAMES
from index.versions import get_active, new_version_name, set_state, version_path
from store import keys
from store.clock import now_ms
from store.exceptions import DocentError, IndexNotFound, InputError, ReindexRefused
from store.record_stream import RecordStream
from store.redis import REDIS_ERRORS
from store.scripts import text
from store.settings import Settings

RUN_ACTOR_NAME = "reindex_run"  # the dramatiq actor (actors.reindex) the web process enqueues by name
EVENTS_MAXLEN = 2000
EVENTS = RecordStream(key=keys.REINDEX_EVENTS, field=keys.REINDEX_EVENT_FIELD, maxlen=EVENTS_MAXLEN)
MIN_CHUNK_TOKENS = 32

JobStatus = Literal["queued", "building", "validating", "done", "rejected", "cancelled", "failed"]
TERMINAL: tuple[JobStatus, ...] = ("done", "rejected", "cancelled", "failed")
RUNNING: tuple[JobStatus, ...] = ("queued", "building", "validating")


class MetricDelta(msgspec.Struct, frozen=True, kw_only=True):
    golden_set: str
    mode: str
    metric: str
    old: float
    new: float
    regressed: bool


class GateReport(msgspec.Struct, kw_only=True):
    """What the golden-set gate (index.reindex.gate) found; carried by the job record."""

    passed: bool
    tolerance: float
    sets: list[str] = []
    skipped: list[str] = []
    deltas: list[MetricDelta] = []
    queries: int = 0
    reason: str = ""
    forced: bool = False


class ReindexJob(msgspec.Struct, kw_only=True):
    id: str
    model: str  # the registered embedder name (index.embed) of the new version
    new_version: str
    old_version: str | None
    chunk_tokens: int
    chunk_overlap: int
    rechunk: bool  # chunker settings given: re-chunk every document instead of reusing the old chunks
    force: bool = False
    requested_by: str = ""
    status: JobStatus = "queued"
    message: str = ""
    docs_total: int = 0
    docs_done: int = 0
    docs_embedded: int = 0  # documents this job embedded (a resumed job never embeds a finished one again)
    chunks_embedded: int = 0
    errors: int = 0
    error_samples: list[str] = []
    failed_docs: dict[str, str] = {}  # doc id -> content hash that could not be built
    build_s: float = 0.0  # time spent building, over every slice
    chunks_per_s: float = 0.0
    eta_s: float | None = None
    slices: int = 0
    gate: GateReport | None = None
    created_at_ms: int = 0
    updated_at_ms: int = 0
    finished_at_ms: int = 0

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


_job_decoder = msgspec.json.Decoder(ReindexJob)
_encoder = msgspec.json.Encoder()


def decode_job(raw: object) -> ReindexJob | None:
    """A job record as stored (None for a missing or unreadable one)."""
    return _job_decoder.decode(raw) if isinstance(raw, bytes | str) else None


def get_job(client: redis.Redis, job_id: str) -> ReindexJob:
    job = decode_job(client.get(keys.reindex_job(job_id)))
    if job is None:
        raise IndexNotFound(f"no reindex job {job_id}", job_id=job_id)
    return job


def list_jobs(client: redis.Redis, limit: int = 20) -> list[ReindexJob]:
    found: list[bytes] = client.zrevrange(keys.REINDEX_JOBS, 0, limit - 1)  # type: ignore[assignment]
    ids = [text(i) for i in found]
    return [job for i in ids if (job := decode_job(client.get(keys.reindex_job(i)))) is not None]


def current_job(client: redis.Redis) -> ReindexJob | None:
    raw = client.get(keys.REINDEX_CURRENT)
    if raw is None:
        return None
    job = decode_job(client.get(keys.reindex_job(text(raw))))
    return job if job is not None and not job.terminal else None


def save_job(client: redis.Redis, job: ReindexJob, *, publish: bool = True) -> None:
    job.updated_at_ms = now_ms()
    data = _encoder.encode(job)
    pipe = client.pipeline(transaction=False)  # two slots on a cluster: the record first, then its event
    pipe.set(keys.reindex_job(job.id), data)
    if publish:
        EVENTS.append(pipe, data)
    pipe.execute()


def _chunking(settings: Settings, chunk_tokens: int | None, chunk_overlap: int | None) -> tuple[int, int]:
    tokens = settings.chunk_tokens if chunk_tokens is None else chunk_tokens
    overlap = settings.chunk_overlap if chunk_overlap is None else chunk_overlap
    valid = isinstance(tokens, int) and isinstance(overlap, int) and tokens >= MIN_CHUNK_TOKENS
    if not valid or not 0 <= overlap < tokens:
        raise InputError(
            "chunk_tokens must be >= 32 and 0 <= chunk_overlap < chunk_tokens", field="chunk_tokens"
        )
    return tokens, overlap


def _claim_slot(client: redis.Redis, job_id: str) -> None:
    """`reindex:current` names this job, unless another job still runs (ReindexRefused)."""
    if client.set(keys.REINDEX_CURRENT, job_id, nx=True):
        return
    running = current_job(client)
    if running is not None:
        raise ReindexRefused(f"reindex job {running.id} is still {running.status}", job_id=running.id)
    client.set(keys.REINDEX_CURRENT, job_id)  # the slot named a job that has ended


def start_job(
    settings: Settings,
    client: redis.Redis,
    *,
    model: str,
    chunk_tokens: int | None = None,
    chunk_overlap: int | None = None,
    force: bool = False,
    requested_by: str = "",
) -> ReindexJob:
    """Record a queued job (one at a time); the caller enqueues `RUN_ACTOR_NAME(job.id)`."""
    if model not in EMBEDDER_NAMES:
        raise InputError(
            f"unknown embedding model {model!r}; known: {', '.join(EMBEDDER_NAMES)}", field="model"
        )
    tokens, overlap = _chunking(settings, chunk_tokens, chunk_overlap)
    job = ReindexJob(
        id=f"rx-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}",
        model=model, new_version=new_version_name(), old_version=get_active(settings), chunk_tokens=tokens,
        chunk_overlap=overlap, rechunk=chunk_tokens is not None or chunk_overlap is not None,
        force=bool(force), requested_by=requested_by, created_at_ms=now_ms(),
    )  # fmt: skip
    _claim_slot(client, job.id)
    save_job(client, job)
    client.zadd(keys.REINDEX_JOBS, {job.id: job.created_at_ms})
    audit(settings, client, "reindex_started", job=job.id, model=model, force=job.force, by=requested_by,
          chunk_tokens=tokens, chunk_overlap=overlap)  # fmt: skip
    return job


def cancel_job(settings: Settings, client: redis.Redis, job_id: str, *, by: str = "") -> ReindexJob:
    job = get_job(client, job_id)
    if job.terminal:
        raise ReindexRefused(f"job {job_id} already ended: {job.status}", job_id=job_id)
    client.set(keys.reindex_cancel(job_id), "1")
    audit(settings, client, "reindex_cancel_requested", job=job_id, by=by)
    return job


def cancel_requested(client: redis.Redis, job_id: str) -> bool:
    return bool(client.get(keys.reindex_cancel(job_id)))


def finish_job(
    settings: Settings, client: redis.Redis, job: ReindexJob, status: JobStatus, message: str
) -> None:
    """End a job: save it terminal, free the slot; a new version that did not become active is rejected."""
    job.status = status
    job.message = message
    job.finished_at_ms = now_ms()
    job.eta_s = 0.0 if status == "done" else None
    if status != "done" and (version_path(settings, job.new_version) / "manifest.json").exists():
        with suppress(DocentError):
            if get_active(settings) != job.new_version:
                set_state(settings, job.new_version, "rejected")
    save_job(client, job)
    client.delete(keys.reindex_cancel(job.id))
    with suppress(*REDIS_ERRORS):
        if client.get(keys.REINDEX_CURRENT) in (job.id, job.id.encode()):
            client.delete(keys.REINDEX_CURRENT)
