"""Golden-set candidates from down-voted answers (`store.golden_candidates`), for a tenant's admin.

    GET  /admin/golden/candidates?tenant=T[&status=open|accepted|dismissed]
        -> {"candidates": [{id, conversation_id, turn, question, answer, passages, comment, status, doc_id}]}
    POST /admin/golden/candidates/{id}?tenant=T   {"doc_id": "..."} accepts (the answering document),
                                                  {"dismiss": true} dismisses  -> the candidate

    GET  /admin/golden/recall[?history=N]   -> {"latest": [GoldenScore], "history": [GoldenScore]}
    POST /admin/golden/recall               -> 202: the active index re-measured on every golden set now

Accepting or dismissing rewrites `{data dir}/golden/feedback` (BEIR layout) from every accepted candidate;
the reindex gate then checks a new index version against those questions too. Auth: the tenant's admin
(an admin token, or the admin key with `?tenant=`). The golden-set recall is the operator's (the admin
key): it measures the whole index (store.golden_recall, actors.golden_recall_job).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from actors.api import send
from actors.broker import INGEST_QUEUE
from actors.golden_schedule import GOLDEN_RECALL_ACTOR
from server.bodies import read_json
from server.callers import require_admin
from server.rest import json_response
from server.services import services
from store.blocking import run_blocking
from store.exceptions import InputError
from store.golden_candidates import Candidate, candidate_store, export_golden, golden_dir
from store.golden_recall import GoldenScore, history_plan, latest_plan
from store.scripts import AsyncRunner

DocId = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
STATUSES: frozenset[str] = frozenset({"open", "accepted", "dismissed"})
MAX_HISTORY = 500


class Decision(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    doc_id: DocId | None = None
    dismiss: bool = False


class GoldenRecall(msgspec.Struct, frozen=True, kw_only=True):
    latest: list[GoldenScore]
    history: list[GoldenScore]


class CandidateList(msgspec.Struct, frozen=True, kw_only=True):
    candidates: list[Candidate]


async def list_candidates(request: Request) -> Response:
    me = require_admin(request)
    status = request.query_params.get("status")
    if status is not None and status not in STATUSES:
        raise InputError(f"status must be one of {sorted(STATUSES)}", field="status")
    store = candidate_store(services(request).settings.redis_url)
    found = await run_blocking(store.listed, me.tenant, status)  # type: ignore[arg-type]
    return json_response(CandidateList(candidates=found))


async def decide_candidate(request: Request) -> Response:
    me = require_admin(request)
    svc = services(request)
    decision = await read_json(request, Decision, svc.settings.max_json_body_bytes)
    if (decision.doc_id is None) == (not decision.dismiss):
        raise InputError("give doc_id (accept) or dismiss: true, not both", field="body")
    store = candidate_store(svc.settings.redis_url)
    decided = await run_blocking(
        store.decide, me.tenant, request.path_params["candidate_id"], doc_id=decision.doc_id, by=me.user
    )
    await run_blocking(export_golden, store, golden_dir(svc.settings.data_path))
    return json_response(decided)


async def golden_recall(request: Request) -> Response:
    require_admin(request, "operator")
    raw = request.query_params.get("history", "100")
    if not raw.isdigit() or not 0 <= int(raw) <= MAX_HISTORY:
        raise InputError(f"history must be 0-{MAX_HISTORY}", field="history")
    runner = AsyncRunner(services(request).redis)
    latest = await runner.run(latest_plan())
    history = await runner.run(history_plan(int(raw))) if int(raw) else []
    return json_response(GoldenRecall(latest=latest, history=history))


async def measure_golden_recall(request: Request) -> Response:
    require_admin(request, "operator")
    settings = services(request).settings
    message_id = await run_blocking(send, settings, INGEST_QUEUE, GOLDEN_RECALL_ACTOR, "admin")
    return json_response({"queued": True, "message_id": message_id}, status_code=202)


def golden_routes() -> list[BaseRoute]:
    return [
        Route("/admin/golden/recall", golden_recall, methods=["GET"]),
        Route("/admin/golden/recall", measure_golden_recall, methods=["POST"]),
        Route("/admin/golden/candidates", list_candidates, methods=["GET"]),
        Route("/admin/golden/candidates/{candidate_id}", decide_candidate, methods=["POST"]),
    ]
