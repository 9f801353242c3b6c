"""/ws/review: a reviewer's live approval queue (the protocol's state machine is server.session's).

hello: a reviewer of the tenant (a slot of the socket caps held), the rooms to follow (hello.rooms, else
the `?room=` query values, else every room the reviewer sees; only rooms the tool policy names). The
socket subscribes to each room on the shared hub *before* reading the room's pending queue, so nothing
falls between the `snapshot` and the live `item` frames (items are idempotent state updates). LIVE:
`decide` and `ping`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.websockets import WebSocket

from server import protocol as p
from server.review.feed import RoomEntry, RoomFeed, room_feed
from server.review.rooms import rooms_to_join
from server.review.service import Reviews, normalise_decision, reviews
from server.session import Session, error_frame
from store.approvals import AlreadyDecided, Decided
from store.exceptions import DocentError

if TYPE_CHECKING:
    from server.services import Services

SNAPSHOT_LIMIT = 500


def result_frame(request_id: str, result: Decided | AlreadyDecided) -> p.DecisionResult:
    record = result.record
    return p.DecisionResult(
        request_id=request_id,
        approval_id=record.approval_id,
        ok=isinstance(result, Decided),
        state=record.state,
        by=record.reviewer,
        at_ms=record.decided_ms,
        reason=record.decision_reason,
    )


class ReviewSession(Session):
    decoder = p.review_decoder
    hello_type = p.ReviewHello

    def __init__(self, ws: WebSocket, services: Services, reviews: Reviews, feed: RoomFeed) -> None:
        super().__init__(ws, services)
        self.reviews = reviews
        self.feed = feed

    async def hello(self, frame: p.ReviewHello) -> None:
        me = self.sign_in(frame.token)
        asked = frame.rooms if frame.rooms is not None else (self.ws.query_params.getlist("room") or None)
        rooms = rooms_to_join(self.reviews.policy, me, asked)
        # Subscribe before the snapshot: whatever changes in between arrives live (and is idempotent).
        for room in rooms:
            subscription = await self.feed.follow(me.tenant, room, self.settings.ws_send_buffer)
            self.follow(subscription, self._send_items)
        await self.reply(p.ReviewReady(tenant=me.tenant, reviewer=me.user, rooms=rooms))
        for room in rooms:
            items = await self.reviews.pending(me.tenant, room, SNAPSHOT_LIMIT)
            await self.reply(p.Snapshot(room=room, items=items))

    async def handle(self, frame: p.Decide) -> None:
        me = self.principal
        assert me is not None
        decision = normalise_decision(frame.decision)
        result = await self.reviews.decide(me, frame.approval_id, decision, frame.reason)
        await self.reply(result_frame(frame.request_id, result))

    def refusal(self, exc: DocentError, frame: object) -> p.ErrorFrame:
        request_id = frame.request_id if isinstance(frame, p.Decide) else None
        return error_frame(exc, request_id=request_id)

    async def _send_items(self, entries: list[RoomEntry]) -> None:
        for entry in entries:
            await self.write(await self.feed.item(entry))


async def review_endpoint(ws: WebSocket) -> None:
    await ReviewSession(ws, ws.app.state.services, reviews(ws.app), room_feed(ws.app)).run()
