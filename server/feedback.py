"""A user's rating of an answer: thumbs up or down with an optional comment, from `/ws/chat` or REST.

    {"type": "feedback", "turn": 2, "rating": "down", "comment": "wrong policy", "client_message_id": "f1"}
    POST /api/conversations/{id}/feedback   {"turn": 2, "rating": "down", "comment": "..."}  -> 202

Only the conversation's owner rates its answers. The rating goes to the actor's inbox (deduplicated by
`client_message_id`, so a retried rating is taken once) and the actor appends it to the durable log as a
`feedback` event on the rated turn (a turn the conversation does not have yet is dropped there); the
workers count it (`docent_feedback_total{rating}`). Ratings are rate-limited like asks (action `feedback`).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from server import protocol as p
from server.auth import Principal
from server.bodies import read_json
from server.callers import principal
from server.rest import json_response
from server.services import services
from store.clock import now_ms
from store.conversations import ConversationMeta, can_write
from store.events import Feedback, Rating
from store.exceptions import ForbiddenError

if TYPE_CHECKING:
    from server.services import Services


class FeedbackBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST .../feedback`: the `feedback` frame's fields (server.protocol.Feedback)."""

    turn: p.FeedbackTurn
    rating: Rating
    comment: p.FeedbackComment = ""
    client_message_id: p.ClientId | None = None

    @classmethod
    def of(cls, frame: p.Feedback) -> FeedbackBody:
        return cls(**msgspec.structs.asdict(frame))


async def submit_feedback(
    services: Services, meta: ConversationMeta, me: Principal, body: FeedbackBody
) -> None:
    if not can_write(meta, me.tenant, me.user):
        raise ForbiddenError("only the conversation's owner may rate its answers")
    await services.limits.check(me, "feedback")
    item = Feedback(
        turn=body.turn, rating=body.rating, comment=body.comment.strip(), user=me.user, at_ms=now_ms()
    )
    dedup = f"feedback-{body.client_message_id or uuid.uuid4().hex}"
    await services.dispatcher.submit(meta.id, item, dedup_id=dedup)


async def feedback_endpoint(request: Request) -> Response:
    me = principal(request)
    svc = services(request)
    meta = await svc.conversations.get(request.path_params["conversation_id"])
    if meta is None or not can_write(meta, me.tenant, me.user):
        raise ForbiddenError("no such conversation, or not yours")
    body = await read_json(request, FeedbackBody, svc.settings.max_json_body_bytes)
    await submit_feedback(svc, meta, me, body)
    return json_response({"accepted": True}, status_code=202)


def feedback_routes() -> list[BaseRoute]:
    return [Route("/api/conversations/{conversation_id}/feedback", feedback_endpoint, methods=["POST"])]
