"""`GET /metrics` (Prometheus text format) and the middleware that counts HTTP requests and open sockets.

The scrape aggregates every process of the stack (`store.metrics`: prometheus-client's multiprocess mode
over `{data dir}/metrics`). It carries no tenant data (labels are route templates, endpoints, models,
tools, outcomes) and is still restricted: the admin key (`X-Admin-Key`), or a client address inside
`DOCENT_METRICS_ALLOW` (comma-separated addresses or networks, e.g. `127.0.0.1,10.0.0.0/8`, for a
Prometheus server that cannot send headers). Anything else gets 401.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from functools import lru_cache

import redis.asyncio as aredis
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actors.broker import (
    AMQP_SCHEMES,
    APPROVALS_QUEUE,
    CONVERSATION_QUEUE,
    INGEST_QUEUE,
    NAMESPACE,
    REINDEX_QUEUE,
)
from index.reindex.jobs import decode_job
from server.callers import require_admin
from server.services import services
from store import golden_recall, keys, metrics
from store.exceptions import ConfigError, DocentError
from store.redis import REDIS_ERRORS, async_client
from store.scripts import AsyncRunner, text
from store.settings import Settings

QUEUES = (CONVERSATION_QUEUE, APPROVALS_QUEUE, INGEST_QUEUE, REINDEX_QUEUE)
log = logging.getLogger(__name__)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
SCRAPE_ERRORS: tuple[type[BaseException], ...] = (*REDIS_ERRORS, DocentError)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=8)
def allowed_networks(value: str) -> tuple[Network, ...]:
    parts = (part.strip() for part in value.split(","))
    return tuple(ipaddress.ip_network(part, strict=False) for part in parts if part)


def check_allow_setting(value: str) -> None:
    """At start: a bad DOCENT_METRICS_ALLOW is a ConfigError, not a 500 at the first scrape."""
    try:
        allowed_networks(value)
    except ValueError as exc:
        raise ConfigError(f"DOCENT_METRICS_ALLOW: {exc}") from None


def _client_allowed(request: Request, allow: str) -> bool:
    if not allow or request.client is None:
        return False
    try:
        address = ipaddress.ip_address(request.client.host)
    except ValueError:
        return False
    return any(address in network for network in allowed_networks(allow))


async def metrics_endpoint(request: Request) -> Response:
    if not _client_allowed(request, services(request).settings.metrics_allow):
        require_admin(request, "operator")
    body = await run_in_threadpool(metrics.exposition)
    data = services(request).redis
    return Response(body + await read_at_scrape(data, queue_client(services(request).settings, data)),
                    media_type=metrics.CONTENT_TYPE)  # fmt: skip


@lru_cache(maxsize=4)
def _broker_client(url: str) -> aredis.Redis:
    return async_client(url, max_connections=2)


def queue_client(settings: Settings, data: aredis.Redis) -> aredis.Redis | None:
    """Where dramatiq's queues are: DOCENT_BROKER_URL's Redis, else the data Redis; None for RabbitMQ
    (whose own management metrics tell its queue depths)."""
    if not settings.broker_url:
        return data
    return None if settings.broker_url.startswith(AMQP_SCHEMES) else _broker_client(settings.broker_url)


async def read_at_scrape(client: aredis.Redis, queues: aredis.Redis | None) -> bytes:
    """Each dramatiq queue's ready list, delayed list and dead letters, the running reindex job, and the
    active index's newest golden-set scores (store.golden_recall)."""
    try:
        depths = await queue_depths(queues) if queues is not None else {}
        job = await current_reindex(client)
        golden = await AsyncRunner(client).run(golden_recall.latest_plan())
    except SCRAPE_ERRORS as exc:  # the rest of the scrape still answers
        log.warning("queue depths, reindex progress and golden recall not read: %s", exc)
        return b""
    return metrics.scrape_exposition(depths, job) + golden_recall.exposition(golden)


async def queue_depths(client: aredis.Redis) -> dict[tuple[str, str], int]:
    names = [(queue, state) for queue in QUEUES for state in metrics.QUEUE_STATES]
    async with client.pipeline(transaction=False) as pipe:
        for queue in QUEUES:
            pipe.llen(f"{NAMESPACE}:{queue}")
            pipe.llen(f"{NAMESPACE}:{queue}.DQ")
            pipe.zcard(f"{NAMESPACE}:{queue}.XQ")
        counts = await pipe.execute()
    return dict(zip(names, (int(c) for c in counts), strict=True))


async def current_reindex(client: aredis.Redis) -> metrics.ReindexProgress | None:
    """The running job (`index.reindex.jobs`' records), read with the async client."""
    current = await client.get(keys.REINDEX_CURRENT)
    raw = await client.get(keys.reindex_job(text(current))) if current is not None else None
    job = decode_job(raw)
    if job is None or job.terminal:
        return None
    return metrics.ReindexProgress(
        docs_done=job.docs_done, docs_total=job.docs_total, chunks_per_s=job.chunks_per_s,
    )  # fmt: skip


def metrics_routes() -> list[BaseRoute]:
    return [Route("/metrics", metrics_endpoint, methods=["GET"])]


def route_template(scope: Scope) -> str:
    """The matched route's path template (`/api/conversations/{conv_id}`), never the raw path."""
    app = scope.get("app")
    for route in getattr(getattr(app, "router", None), "routes", ()):
        match, _ = route.matches(scope)
        if match != Match.NONE:
            return f"{route.path}/{{path}}" if isinstance(route, Mount) else str(getattr(route, "path", ""))
    return UNMATCHED


class MetricsMiddleware:
    """HTTP requests by route template, method and status; open WebSockets by endpoint."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            gauge = metrics.SOCKETS_OPEN.labels(route_template(scope))
            gauge.inc()
            try:
                await self.app(scope, receive, send)
            finally:
                gauge.dec()
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the error middleware outside answers when the app raises

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        finally:
            route = route_template(scope)
            method = scope["method"] if scope["method"] in METHODS else "other"
            metrics.HTTP_REQUESTS.labels(route, method, str(status)).inc()
            metrics.HTTP_DURATION.labels(route).observe(time.perf_counter() - started)
