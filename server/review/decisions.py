"""The reviewer REST endpoints: a room's pending queue, one approval, and the decision.

The caller and its role are checked before the body is read, and the body is read up to
`max_json_body_bytes` only (server.bodies).
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from server.bodies import read_json
from server.callers import principal
from server.protocol import DecisionWord, Reason
from server.rest import json_response
from server.review.rooms import check_room, require_reviewer
from server.review.service import normalise_decision, reviews
from server.review.socket import SNAPSHOT_LIMIT
from store.approvals import AlreadyDecided
from store.conversations import is_identifier
from store.exceptions import ForbiddenError


class DecisionBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    decision: DecisionWord
    reason: Reason = ""


def _conflict(result: AlreadyDecided, view: object) -> Response:
    conflict = {
        "ok": False,
        "code": "already_decided",
        "message": f"already {result.decision}" + (f" by {result.by}" if result.by else ""),
        "by": result.by,
        "decision": result.decision,
        "at_ms": result.at_ms,
        "approval": view,
    }
    return json_response(conflict, status_code=409)


async def post_decision(request: Request) -> Response:
    me = require_reviewer(principal(request))
    body = await read_json(request, DecisionBody, request.app.state.services.settings.max_json_body_bytes)
    state = reviews(request.app)
    decision = normalise_decision(body.decision)
    result = await state.decide(me, request.path_params["approval_id"], decision, body.reason)
    view = await state.view(result.record)
    if isinstance(result, AlreadyDecided):
        return _conflict(result, view)
    return json_response({"ok": True, "approval": view})


async def get_approval(request: Request) -> Response:
    state = reviews(request.app)
    record = await state.visible(principal(request), request.path_params["approval_id"])
    return json_response(await state.view(record))


async def list_approvals(request: Request) -> Response:
    """Pending approvals of one room (`?room=`), oldest first."""
    me = require_reviewer(principal(request))
    state = reviews(request.app)
    room = request.query_params.get("room", "general")
    if not is_identifier(room):
        raise ForbiddenError(f"you are not a reviewer of room {room}")
    check_room(state.policy, me, room)
    return json_response({"room": room, "items": await state.pending(me.tenant, room, SNAPSHOT_LIMIT)})
