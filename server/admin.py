"""Admin routes for index versions and reindex jobs (admin API key in `X-Admin-Key`).

    POST /admin/reindex                {model, chunk_tokens?, chunk_overlap?, force?} -> 202 {job}
    GET  /admin/reindex/{job_id}       the job: status, documents done/total, chunks/s, ETA, errors, gate
    POST /admin/reindex/{job_id}/cancel
    POST /admin/rollback               {force?} -> the alias (the previous pair is active again)
    POST /admin/versions/{version}/retire
    GET  /admin/versions               the alias, every version's manifest, recent jobs
    WS   /ws/admin                     {"type": "reindex", "job": {...}} frames as the job progresses
    GET  /admin                        the operator console page (the key is typed in, not in the URL)

The web process loads no model and no index: it records jobs in Redis, enqueues the reindex actor by name
(`index.reindex.RUN_ACTOR_NAME`) and reads progress back from Redis; rollback and retire are file and
catalog operations. Every route and the socket (server.admin_socket) take the admin key through
`server.callers.require_admin`; bodies are read after it, up to `max_json_body_bytes`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import TypeVar

import msgspec
import redis
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from actors.api import enqueue_reindex
from index import reindex
from server.admin_socket import admin_endpoint
from server.bodies import read_json
from server.callers import require_admin
from server.pages import render_page
from server.rest import json_response
from server.services import services
from store.blocking import run_blocking
from store.exceptions import DocentError, IndexNotFound, ReindexRefused
from store.redis import sync_client
from store.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")


class ReindexRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    model: str
    chunk_tokens: int | None = None
    chunk_overlap: int | None = None
    force: bool = False


class RollbackRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    force: bool = False


# -- plumbing ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _client(url: str) -> redis.Redis:
    return sync_client(url)


def _admin(request: Request) -> tuple[Settings, redis.Redis, str]:
    """The operator's settings, a blocking Redis client and the name the audit log gives the caller."""
    me = require_admin(request, "operator")
    settings = services(request).settings
    return settings, _client(settings.redis_url), me.user


async def _body(request: Request, kind: type[T]) -> T:
    return await read_json(request, kind, services(request).settings.max_json_body_bytes, empty=b"{}")


# -- routes ---------------------------------------------------------------------------------------------


async def start_reindex(request: Request) -> Response:
    settings, client, actor = _admin(request)
    body: ReindexRequest = await _body(request, ReindexRequest)
    job = await run_blocking(
        reindex.start_job, settings, client, model=body.model, chunk_tokens=body.chunk_tokens,
        chunk_overlap=body.chunk_overlap, force=body.force, requested_by=actor,
    )  # fmt: skip
    await run_blocking(enqueue_reindex, settings, job.id)
    return json_response({"job_id": job.id, "job": job}, status_code=202)


async def get_reindex(request: Request) -> Response:
    _settings, client, _actor = _admin(request)
    job = await run_blocking(reindex.get_job, client, request.path_params["job_id"])
    return json_response(job)


async def cancel_reindex(request: Request) -> Response:
    settings, client, actor = _admin(request)
    job_id = request.path_params["job_id"]
    await run_blocking(reindex.cancel_job, settings, client, job_id, by=actor)
    await run_blocking(enqueue_reindex, settings, job_id)  # a queued job with no worker yet ends too
    return json_response(await run_blocking(reindex.get_job, client, job_id), status_code=202)


async def rollback(request: Request) -> Response:
    settings, client, actor = _admin(request)
    body: RollbackRequest = await _body(request, RollbackRequest)
    alias = await run_blocking(reindex.rollback, settings, client, by=actor, force=body.force)
    return json_response(alias)


async def retire_version(request: Request) -> Response:
    settings, client, actor = _admin(request)
    manifest = await run_blocking(reindex.retire, settings, client, request.path_params["version"], by=actor)
    return json_response(manifest)


async def list_versions(request: Request) -> Response:
    settings, client, _actor = _admin(request)

    def collect() -> dict[str, object]:
        return {
            "alias": reindex.read_alias(settings),
            "versions": reindex.versions_info(settings),
            "jobs": reindex.list_jobs(client),
        }

    return json_response(await run_blocking(collect))


Endpoint = Callable[[Request], Awaitable[Response]]
STATUS_BY_ERROR: tuple[tuple[type[DocentError], int], ...] = ((IndexNotFound, 404), (ReindexRefused, 409))


def _mapped(endpoint: Endpoint) -> Endpoint:
    """Refusals are conflicts (409) and unknown jobs or versions 404; the app maps the rest."""

    async def call(request: Request) -> Response:
        try:
            return await endpoint(request)
        except (IndexNotFound, ReindexRefused) as exc:
            status = next(s for t, s in STATUS_BY_ERROR if isinstance(exc, t))
            return json_response(exc.to_wire(), status_code=status)

    return call


# -- the console page ------------------------------------------------------------------------------------

async def admin_page(request: Request) -> Response:
    """The console (web/templates/admin.html): public like the other pages; every call it makes needs the
    admin key."""
    return render_page(request, "admin.html", framable=False)


def admin_routes() -> list[BaseRoute]:
    return [
        Route("/admin", admin_page, methods=["GET"]),
        Route("/admin/reindex", _mapped(start_reindex), methods=["POST"]),
        Route("/admin/reindex/{job_id}", _mapped(get_reindex), methods=["GET"]),
        Route("/admin/reindex/{job_id}/cancel", _mapped(cancel_reindex), methods=["POST"]),
        Route("/admin/rollback", _mapped(rollback), methods=["POST"]),
        Route("/admin/versions/{version}/retire", _mapped(retire_version), methods=["POST"]),
        Route("/admin/versions", _mapped(list_versions), methods=["GET"]),
        WebSocketRoute("/ws/admin", admin_endpoint),
    ]
