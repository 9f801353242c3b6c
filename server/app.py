"""The web process: `uvicorn server.app:create_app --factory` (or `python -m server.app`, which also passes
the WebSocket limits from settings to uvicorn).

It holds sockets and talks to Redis; it loads no model and no index. Inbound chat items go to the
actors through a `Dispatcher` (inbox + wake-up); uploads are handed to an ingest enqueuer.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import redis
import redis.asyncio as aredis
from redis.exceptions import RedisClusterException
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from actors import api as actors_api
from actors.api import Dispatcher
from server import collector
from server.admin import admin_routes
from server.auth import Authenticator
from server.chat import chat_endpoint
from server.dispatch import RedisDispatcher, Wake
from server.documents import routes as document_routes
from server.feedback import feedback_routes
from server.golden_api import golden_routes
from server.hub import Hub, hub_client
from server.limits import ActionLimits, SocketQuota
from server.mcp_api import McpEndpoint
from server.mcp_api import routes as mcp_routes
from server.metrics_route import MetricsMiddleware, check_allow_setting, metrics_routes
from server.openai_api import routes as openai_routes
from server.pages import WEB_DIR, render_page
from server.rest import json_response, routes
from server.review.routes import routes as review_routes
from server.search_api import routes as search_routes
from server.services import Ingest, Services
from server.statuses import status_for
from server.traces import trace_routes
from server.usage_api import usage_routes
from store import metrics, tracing
from store.conversations import Conversations
from store.exceptions import (
    ConfigError,
    DocentError,
)
from store.permissions import private_umask
from store.ratelimit import AsyncRateLimiter
from store.redis import async_client, unavailable
from store.redis_identity import averify
from store.settings import Settings, get_settings

# uvicorn drops frames over this many times settings.max_frame_bytes (close 1009); below it our own
# check answers with a typed error frame and close 4413.
HARD_FRAME_LIMIT_FACTOR = 4
WS_PING_INTERVAL_S = 20.0
REDIS_POOL_CONNECTIONS = 64
REDIS_POOL_WAIT_S = 5.0
WS_PING_TIMEOUT_S = 20.0

log = logging.getLogger(__name__)


def dispatcher_for(settings: Settings, client: aredis.Redis, wake: Wake | None) -> RedisDispatcher:
    wake = wake or actors_api.make_wake(settings)
    replicas, timeout_ms = settings.redis_wait_replicas, settings.redis_wait_timeout_ms
    return RedisDispatcher(client, wake, replicas=replicas, wait_timeout_ms=timeout_ms)


def parse_origins(value: str) -> frozenset[str]:
    return frozenset(o.strip().rstrip("/") for o in value.split(",") if o.strip())


async def docent_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DocentError)
    status = status_for(exc)
    response = json_response(exc.to_wire(), status_code=status)
    retry = exc.details.get("retry_after_ms")
    if isinstance(retry, int):
        response.headers["Retry-After"] = str(max(1, -(-retry // 1000)))
    return response


async def redis_error(request: Request, exc: Exception) -> Response:
    """A Redis failure no handler translated: `unavailable`, without the address it names."""
    return await docent_error(request, unavailable(exc))


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return json_response({"code": "http_error", "message": exc.detail}, status_code=exc.status_code)


def create_app(
    settings: Settings | None = None,
    *,
    wake: Wake | None = None,
    ingest: Ingest | None = None,
    dispatcher: Dispatcher | None = None,
) -> Starlette:
    settings = settings or get_settings()
    if not settings.redis_url:
        raise ConfigError("the web process needs DOCENT_REDIS_URL (`docent run` starts one for you)")
    actors_api.queue_url(settings)  # a Redis Cluster without DOCENT_BROKER_URL stops the process here
    auth = Authenticator.from_settings(settings)  # fail at start, not at the first request
    allowed_origins = parse_origins(settings.allowed_origins)
    check_allow_setting(settings.metrics_allow)
    mcp = McpEndpoint()  # the MCP tools at /mcp (server.mcp_api)
    tracing.check_protocol(os.environ)  # a bad OTEL_ protocol stops the process at start

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Start-up objects frozen out of the collector, the web process's thresholds (server.collector).
        gc_log = collector.configure(settings.web_gc_thresholds, settings.web_gc_log_path)
        # Requests wait for a pooled connection rather than failing when many sockets greet at once; the
        # hub's blocking reads get their own bounded pool (one connection per batch of keys).
        client = async_client(
            settings.redis_url, max_connections=REDIS_POOL_CONNECTIONS, pool_wait_s=REDIS_POOL_WAIT_S
        )
        await averify(client, settings.redis_identity)  # never serve from another stack's Redis
        metrics.forget_dead_processes()  # a previous web process's open-socket gauges
        metrics.expose_known_labels()
        tracing.configure("web")  # OTLP traces when OTEL_EXPORTER_OTLP_ENDPOINT is set
        hub = Hub(hub_client(settings.redis_url))
        app.state.services = Services(
            settings=settings,
            redis=client,
            auth=auth,
            conversations=Conversations(client),
            hub=hub,
            dispatcher=dispatcher or dispatcher_for(settings, client, wake),
            limits=ActionLimits(AsyncRateLimiter(client), settings),
            sockets=SocketQuota(settings.ws_max_sockets_per_user, settings.ws_max_sockets_per_tenant),
            ingest=ingest or actors_api.make_ingest(settings),
            allowed_origins=allowed_origins,
        )
        try:
            async with mcp.running(app.state.services):
                yield
        finally:
            await hub.aclose()
            await hub.client.aclose()
            if isinstance(app.state.services.dispatcher, RedisDispatcher):
                await app.state.services.dispatcher.aclose()  # its clients of the cluster's primaries
            await client.aclose()
            tracing.shutdown()  # flush the spans still queued
            if gc_log is not None:
                gc_log.close()

    async def chat_page(request: Request) -> Response:
        return render_page(request, "chat.html")

    async def docent_module(request: Request) -> Response:
        body = (
            'import "./docent.js";\n'
            "const Docent = globalThis.Docent;\n"
            "export const connect = Docent.connect;\n"
            "export const mount = Docent.mount;\n"
            "export const renderMarkdown = Docent.renderMarkdown;\n"
            "export default Docent;\n"
        )
        return Response(body, media_type="text/javascript")

    app_routes = [
        Route("/", chat_page, methods=["GET"]),
        WebSocketRoute("/ws/chat", chat_endpoint),
        *routes(),
        *document_routes(),
        *search_routes(),
        *openai_routes(),
        *admin_routes(),
        *review_routes(),
        *trace_routes(),
        *metrics_routes(),
        *mcp_routes(mcp),
        *usage_routes(),
        *feedback_routes(),
        *golden_routes(),
        Route("/static/docent.mjs", docent_module, methods=["GET"]),
        Mount("/static", StaticFiles(directory=str(WEB_DIR / "static")), name="static"),
    ]
    middleware = [
        Middleware(MetricsMiddleware),
        Middleware(
            CORSMiddleware,
            allow_origins=sorted(allowed_origins),
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Admin-Key"],
            max_age=600,
        )
    ]
    return Starlette(
        routes=app_routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            DocentError: docent_error, redis.RedisError: redis_error, HTTPException: http_error,
            RedisClusterException: redis_error,
        },
    )


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn options that enforce this app's WebSocket limits."""
    return {
        "ws": "server.ws_protocol:DirectWriteProtocol",  # websockets-sansio, with direct frame writes
        "ws_max_size": settings.max_frame_bytes * HARD_FRAME_LIMIT_FACTOR,
        "ws_ping_interval": WS_PING_INTERVAL_S,
        "ws_ping_timeout": WS_PING_TIMEOUT_S,
        "ws_per_message_deflate": False,
    }


def serve(app: str = "server.app:create_app", *, host: str = "", port: int = 0) -> None:
    """Run `app` (an app factory's import path) under uvicorn with `uvicorn_options`; what `main` runs."""
    import uvicorn

    private_umask()
    settings = get_settings()
    host, port = host or settings.host, port or settings.port
    uvicorn.run(app, factory=True, host=host, port=port, log_level="warning", **uvicorn_options(settings))


def main() -> None:
    serve()


if __name__ == "__main__":
    main()
