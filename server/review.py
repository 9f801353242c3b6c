"""Reviewer rooms: /ws/review (live approval queue), the decision REST endpoint, the audit listing, /review.

Who may review: a principal with the `reviewer` or `admin` role, in its own tenant only. A reviewer whose
groups include `review.<room>` entries is limited to those rooms; one without any sees every room of its
tenant. A request's author may not approve it unless the tool policy says `self_approval_allowed`.

    CONNECTING ──origin ok──▶ AWAITING_HELLO ──hello: reviewer, rooms allowed──▶ LIVE ──▶ CLOSED

LIVE: the socket has a subscription per room on the process's shared room reader (one XREAD loop per
room stream `room:{tenant}:{room}:events`, whatever the number of sockets), then a `snapshot` of each
room's pending queue; after that every `requested`, `decided`, `expired` and `reminder` room event comes
as an `item` frame. Items are idempotent state updates keyed by approval id, so one seen both in the
snapshot and live is harmless. A decision (`decide` frame, or POST /api/approvals/{id}/decision) is a
compare-and-set: the winner gets `ok`, the loser `already_decided` naming who decided. Wire format in
docs/protocol.md ("Reviewer rooms").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
import redis
import redis.asyncio as aredis
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from actors import approvals
from server import protocol as p
from server.auth import Principal
from server.buffer import BoundedBuffer
from server.chat import origin_allowed
from server.fanout import log_key
from server.limits import FrameBudget
from server.pages import render_page
from server.rest import bearer_token, json_response
from store.approvals import (
    MAX_REASON_CHARS,
    AlreadyDecided,
    ApprovalRecord,
    AsyncApprovalLedger,
    Decided,
    RoomEvent,
    State,
    room_events_key,
)
from store.conversations import is_identifier
from store.events import Decision, UserMessage, decode_event
from store.exceptions import (
    AuthError,
    DocentError,
    ForbiddenError,
    FrameError,
    InputError,
    NotFound,
    RateLimited,
)
from store.scripts import payload

if TYPE_CHECKING:
    from actors.tools.policy import RiskPolicy
    from server.app import Services

HELLO_TIMEOUT_S = 10.0
CLOSE_SEND_TIMEOUT_S = 5.0
ROOM_BLOCK_MS = 2_000  # under redis-py's default 5 s socket timeout
ROOM_READ_COUNT = 100
ROOM_RETRY_BACKOFF_S = (0.05, 0.2, 1.0, 2.0)
SNAPSHOT_LIMIT = 500
CONTEXT_SCAN_ENTRIES = 200
CONTEXT_MAX_CHARS = 2_000
CONTEXT_CACHE_ENTRIES = 4_096
MAX_ROOMS_PER_SOCKET = 32
REVIEW_ROOM_GROUP_PREFIX = "review."
DECISIONS_LIMIT_DEFAULT = 100
DECISIONS_LIMIT_MAX = 1_000

RoomName = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
RequestId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Reason = Annotated[str, msgspec.Meta(max_length=MAX_REASON_CHARS)]
DecisionWord = Literal["approved", "denied", "approve", "deny"]

log = logging.getLogger(__name__)


# ---- wire format ------------------------------------------------------------------------------------


class _ClientFrame(msgspec.Struct, tag_field="type", frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class ReviewHello(_ClientFrame, frozen=True, kw_only=True, tag="hello"):
    token: p.Token | None = None
    rooms: Annotated[list[RoomName], msgspec.Meta(max_length=MAX_ROOMS_PER_SOCKET)] | None = None


class Decide(_ClientFrame, frozen=True, kw_only=True, tag="decide"):
    approval_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    decision: DecisionWord
    reason: Reason = ""
    request_id: RequestId


class ReviewPing(_ClientFrame, frozen=True, kw_only=True, tag="ping"):
    pass


ReviewClientFrame = ReviewHello | Decide | ReviewPing


class ApprovalView(msgspec.Struct, frozen=True, kw_only=True):
    """What a reviewer sees of one approval."""

    approval_id: str
    conv_id: str
    room: str
    tool: str
    args: msgspec.Raw  # the exact arguments the approval covers (JSON object)
    args_hash: str
    risk: str = "high"
    requested_by: str
    reason: str  # the agent's stated reason
    context: str  # the conversation's last user message
    created_ms: int
    expires_ms: int
    state: State
    reviewer: str = ""
    decision_reason: str = ""
    decided_ms: int = 0
    self_approval_allowed: bool = False


class _ServerFrame(msgspec.Struct, tag_field="type", frozen=True, kw_only=True, omit_defaults=True):
    pass


class ReviewReady(_ServerFrame, frozen=True, kw_only=True, tag="ready"):
    tenant: str
    reviewer: str
    rooms: list[str]


class Snapshot(_ServerFrame, frozen=True, kw_only=True, tag="snapshot"):
    room: str
    items: list[ApprovalView]


class Item(_ServerFrame, frozen=True, kw_only=True, tag="item"):
    room: str
    id: str  # the room stream entry id
    kind: Literal["requested", "decided", "expired", "reminder"]
    approval: ApprovalView


class DecisionResult(_ServerFrame, frozen=True, kw_only=True, tag="decision"):
    request_id: str
    approval_id: str
    ok: bool  # true: this decision was taken; false: someone (or the clock) decided first
    state: State  # the approval's state now
    by: str = ""  # who decided ("" when it expired)
    at_ms: int = 0
    reason: str = ""


class ReviewError(_ServerFrame, frozen=True, kw_only=True, tag="error"):
    code: str
    message: str
    request_id: str | None = None
    retry_after_ms: int | None = None


class ReviewPong(_ServerFrame, frozen=True, kw_only=True, tag="pong"):
    pass


class ReviewResumeRequired(_ServerFrame, frozen=True, kw_only=True, tag="resume_required"):
    pass


ReviewServerFrame = (
    ReviewReady | Snapshot | Item | DecisionResult | ReviewError | ReviewPong | ReviewResumeRequired
)

_client_decoder = msgspec.json.Decoder(ReviewClientFrame)
_server_decoder = msgspec.json.Decoder(ReviewServerFrame)
_encoder = msgspec.json.Encoder()
_room_event_decoder = msgspec.json.Decoder(RoomEvent)


def decode_client(data: bytes | str) -> ReviewClientFrame:
    return _client_decoder.decode(data)


def decode_server(data: bytes | str) -> ReviewServerFrame:
    return _server_decoder.decode(data)


def encode(frame: ReviewServerFrame | ReviewClientFrame) -> bytes:
    return _encoder.encode(frame)


def normalise_decision(word: str) -> Decision:
    match word:
        case "approved" | "approve":
            return "approved"
        case "denied" | "deny":
            return "denied"
    raise InputError("decision must be approve or deny", field="decision")


# ---- who may review what ----------------------------------------------------------------------------


def is_reviewer(principal: Principal) -> bool:
    return principal.has_role("reviewer") or principal.is_admin


def reviewer_rooms(principal: Principal) -> frozenset[str] | None:
    """The rooms a reviewer is limited to (`review.<room>` groups); None = every room of the tenant."""
    if principal.is_admin:
        return None
    rooms = frozenset(
        g[len(REVIEW_ROOM_GROUP_PREFIX) :] for g in principal.groups if g.startswith(REVIEW_ROOM_GROUP_PREFIX)
    )
    return rooms or None


def may_see_room(principal: Principal, room: str) -> bool:
    allowed = reviewer_rooms(principal)
    return is_reviewer(principal) and (allowed is None or room in allowed)


def known_rooms(policy: RiskPolicy, tenant: str) -> list[str]:
    """Every room the policy can route a tenant's approvals to."""
    from actors.tools.policy import BUILTIN_RULES, DEFAULT_ROOM

    rules = [*BUILTIN_RULES.values(), *policy.config.tools.values()]
    tenant_policy = policy.config.tenants.get(tenant)
    if tenant_policy is not None:
        rules += list(tenant_policy.tools.values())
    return sorted({DEFAULT_ROOM, *(r.room for r in rules if r.room)})


# ---- shared state of the web process ---------------------------------------------------------------


class ReviewState:
    """The process's review services, created on first use inside the running loop."""

    def __init__(self, services: Services) -> None:
        self.services = services
        # Imported here, not at module level: actors.tools pulls in numpy (index.types), which the web
        # process must not load at import (tests/test_server_ws.py); a reviewer's first request does.
        from actors.tools.policy import RiskPolicy

        self.ledger = AsyncApprovalLedger(services.redis)
        self.policy = RiskPolicy.from_settings(services.settings)
        self.contexts = ContextCache(services.redis)
        self.hub = RoomHub(services.fanout.client, self)

    async def view(self, record: ApprovalRecord) -> ApprovalView:
        return ApprovalView(
            approval_id=record.approval_id,
            conv_id=record.conv_id,
            room=record.room,
            tool=record.tool,
            args=msgspec.Raw(record.args.encode()),
            args_hash=record.args_hash,
            requested_by=record.requested_by,
            reason=record.reason,
            context=await self.contexts.last_user_message(record.approval_id, record.conv_id),
            created_ms=record.created_ms,
            expires_ms=record.expires_ms,
            state=record.state,
            reviewer=record.reviewer,
            decision_reason=record.decision_reason,
            decided_ms=record.decided_ms,
            self_approval_allowed=self.policy.self_approval_allowed(record.tenant, record.tool),
        )

    async def visible(self, principal: Principal, approval_id: str) -> ApprovalRecord:
        """The approval if this principal may review it; NotFound for another tenant's (not revealed)."""
        if not is_reviewer(principal):
            raise ForbiddenError("the reviewer role is required")
        if not approval_id or len(approval_id) > 200:
            raise NotFound("no such approval")
        record = await self.ledger.get(approval_id)
        if record is None or record.tenant != principal.tenant:
            raise NotFound(f"no approval {approval_id}")
        if not may_see_room(principal, record.room):
            raise ForbiddenError(f"you are not a reviewer of room {record.room}")
        return record

    async def decide(
        self, principal: Principal, approval_id: str, decision: Decision, reason: str
    ) -> Decided | AlreadyDecided:
        record = await self.visible(principal, approval_id)
        if len(reason) > MAX_REASON_CHARS:
            raise InputError(f"reason exceeds {MAX_REASON_CHARS} characters", field="reason")
        own = record.requested_by == principal.user
        if (
            own
            and decision == "approved"
            and not self.policy.self_approval_allowed(record.tenant, record.tool)
        ):
            raise ForbiddenError("you cannot approve your own request")
        return await approvals.decide(
            self.ledger,
            self.services.dispatcher,
            approval_id,
            decision,
            principal.user,
            reason,
            tenant=principal.tenant,
        )


def review_state(app: Any) -> ReviewState:
    state: ReviewState | None = getattr(app.state, "review", None)
    if state is None:
        state = app.state.review = ReviewState(app.state.services)
    return state


class ContextCache:
    """The last user message of an approval's conversation, read once per approval."""

    def __init__(self, client: aredis.Redis) -> None:
        self.client = client
        self._cache: OrderedDict[str, str] = OrderedDict()

    async def last_user_message(self, approval_id: str, conv_id: str) -> str:
        cached = self._cache.get(approval_id)
        if cached is not None:
            self._cache.move_to_end(approval_id)
            return cached
        text = ""
        try:
            entries: Any = await self.client.xrevrange(log_key(conv_id), "+", "-", count=CONTEXT_SCAN_ENTRIES)
        except (redis.RedisError, InputError) as exc:
            log.warning("no context for approval %s: %s", approval_id, exc)
            return ""
        for _, fields in entries:
            try:
                event = decode_event(payload(fields))
            except (KeyError, msgspec.DecodeError):
                continue
            if isinstance(event, UserMessage):
                text = event.text[:CONTEXT_MAX_CHARS]
                break
        self._cache[approval_id] = text
        while len(self._cache) > CONTEXT_CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return text


# ---- the shared room reader -------------------------------------------------------------------------


class RoomSubscription(BoundedBuffer[bytes]):
    """One socket's bounded buffer of encoded `item` frames for one room."""

    def __init__(self, hub: RoomHub, key: str, capacity: int) -> None:
        super().__init__(capacity)
        self.hub = hub
        self.key = key

    def _on_close(self) -> None:
        self.hub.unsubscribe(self)


class _RoomTopic:
    def __init__(self, key: str, room: str, loop: asyncio.AbstractEventLoop) -> None:
        self.key = key
        self.room = room
        self.subscribers: set[RoomSubscription] = set()
        self.started: asyncio.Future[None] = loop.create_future()
        self.task: asyncio.Task[None] | None = None


class RoomHub:
    """One XREAD BLOCK loop per room stream in this process, fanning items out to every subscriber; a
    room's loop starts with its first subscriber and stops with its last."""

    def __init__(self, client: aredis.Redis, state: ReviewState) -> None:
        self.client = client
        self.state = state
        self._topics: dict[str, _RoomTopic] = {}

    @property
    def room_count(self) -> int:
        return len(self._topics)

    async def subscribe(self, tenant: str, room: str, capacity: int) -> RoomSubscription:
        """Receives every room event appended after this returns (and possibly a few before)."""
        key = room_events_key(tenant, room)
        subscription = RoomSubscription(self, key, capacity)
        topic = self._topics.get(key)
        if topic is None:
            topic = self._topics[key] = _RoomTopic(key, room, asyncio.get_running_loop())
            topic.task = asyncio.create_task(self._run(topic), name=f"review-room-{room}")
        topic.subscribers.add(subscription)
        try:
            await asyncio.shield(topic.started)
        except BaseException:
            subscription.close()
            raise
        return subscription

    def unsubscribe(self, subscription: RoomSubscription) -> None:
        topic = self._topics.get(subscription.key)
        if topic is None:
            return
        topic.subscribers.discard(subscription)
        if not topic.subscribers:
            del self._topics[topic.key]
            if topic.task is not None:
                topic.task.cancel()

    async def _run(self, topic: _RoomTopic) -> None:
        try:
            tail: Any = await self.client.xrevrange(topic.key, "+", "-", count=1)
        except redis.RedisError as exc:
            if self._topics.get(topic.key) is topic:
                del self._topics[topic.key]
            topic.started.set_exception(exc)
            topic.started.exception()  # retrieved: waiters re-raise their own copy
            return
        cursor = _text(tail[0][0]) if tail else "0-0"
        topic.started.set_result(None)
        failures = 0
        while topic.subscribers:
            try:
                reply: Any = await self.client.xread(
                    {topic.key: cursor}, count=ROOM_READ_COUNT, block=ROOM_BLOCK_MS
                )
                failures = 0
            except redis.RedisError as exc:
                delay = ROOM_RETRY_BACKOFF_S[min(failures, len(ROOM_RETRY_BACKOFF_S) - 1)]
                failures += 1
                log.warning("review room read failed (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    cursor = _text(entry_id)
                    try:
                        frame = await self._frame(topic.room, cursor, fields)
                    except Exception:  # one bad entry must not silence the room for every reviewer
                        log.exception("skipping room entry %s of %s", cursor, topic.key)
                        continue
                    if frame is not None:
                        for subscriber in list(topic.subscribers):
                            subscriber.push(frame)

    async def _frame(self, room: str, entry_id: str, fields: dict[Any, Any]) -> bytes | None:
        try:
            event = _room_event_decoder.decode(payload(fields))
        except (KeyError, msgspec.DecodeError):
            log.error("skipping undecodable room entry %s", entry_id)
            return None
        view = await self.state.view(event.record)
        return encode(Item(room=room, id=entry_id, kind=event.kind, approval=view))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# ---- /ws/review ------------------------------------------------------------------------------------


class Close(Exception):
    def __init__(self, code: int, frame: ReviewServerFrame | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.frame = frame


class Disconnected(Exception):
    pass


def error_frame(exc: DocentError, request_id: str | None = None) -> ReviewError:
    retry = exc.details.get("retry_after_ms")
    return ReviewError(
        code=exc.code,
        message=exc.message,
        request_id=request_id,
        retry_after_ms=retry if isinstance(retry, int) else None,
    )


def result_frame(request_id: str, result: Decided | AlreadyDecided) -> DecisionResult:
    record = result.record
    return DecisionResult(
        request_id=request_id,
        approval_id=record.approval_id,
        ok=isinstance(result, Decided),
        state=record.state,
        by=record.reviewer,
        at_ms=record.decided_ms,
        reason=record.decision_reason,
    )


class ReviewConnection:
    def __init__(self, ws: WebSocket, state: ReviewState) -> None:
        self.ws = ws
        self.state = state
        self.settings = state.services.settings
        self.principal: Principal | None = None
        self.subscriptions: list[RoomSubscription] = []
        self.frames = FrameBudget()
        self.last_activity = time.monotonic()
        self._write_lock = asyncio.Lock()

    async def run(self) -> None:
        await self.ws.accept()
        try:
            try:
                origin, host = self.ws.headers.get("origin"), self.ws.headers.get("host")
                if not origin_allowed(origin, host, self.state.services.allowed_origins):
                    raise Close(
                        p.CLOSE_FORBIDDEN, ReviewError(code="forbidden", message="origin not allowed")
                    )
                await self._greet()
                await self._live()
            except DocentError as exc:
                codes: dict[type[DocentError], int] = {
                    AuthError: p.CLOSE_UNAUTHORIZED,
                    ForbiddenError: p.CLOSE_FORBIDDEN,
                }
                raise Close(codes.get(type(exc), p.CLOSE_UNAVAILABLE), error_frame(exc)) from None
            except redis.RedisError as exc:
                log.warning("closing a review socket: redis failed: %s", exc)
                frame = ReviewError(code="unavailable", message="storage unavailable: retry shortly")
                raise Close(p.CLOSE_UNAVAILABLE, frame) from None
        except Close as close:
            await self._close(close.code, close.frame)
        except (Disconnected, WebSocketDisconnect):
            pass
        finally:
            for subscription in self.subscriptions:
                subscription.close()

    async def _greet(self) -> None:
        query_token = self.ws.query_params.get("token")
        if query_token is not None:
            self.principal = self.state.services.auth.principal(query_token)
        deadline = time.monotonic() + min(HELLO_TIMEOUT_S, self.settings.ws_idle_timeout_s)
        while True:
            frame = await self._receive(until=deadline)
            if isinstance(frame, ReviewHello):
                break
            if frame is not None:
                await self._reply(ReviewError(code="bad_frame", message="the first frame must be hello"))
        if frame.token is not None:
            self.principal = self.state.services.auth.principal(frame.token)
        me = self.principal
        if me is None:
            raise AuthError("no token: pass ?token= or hello.token")
        if not is_reviewer(me):
            raise ForbiddenError("the reviewer role is required")
        rooms = frame.rooms
        if rooms is None:
            asked = self.ws.query_params.getlist("room")
            rooms = asked or [r for r in known_rooms(self.state.policy, me.tenant) if may_see_room(me, r)]
        rooms = list(dict.fromkeys(rooms))
        if len(rooms) > MAX_ROOMS_PER_SOCKET:
            raise FrameError(f"at most {MAX_ROOMS_PER_SOCKET} rooms per socket")
        for room in rooms:
            if not is_identifier(room) or not may_see_room(me, room):
                raise ForbiddenError(f"you are not a reviewer of room {room}")
        # Subscribe before the snapshot: whatever changes in between arrives live (and is idempotent).
        for room in rooms:
            subscription = await self.state.hub.subscribe(me.tenant, room, self.settings.ws_send_buffer)
            self.subscriptions.append(subscription)
        await self._reply(ReviewReady(tenant=me.tenant, reviewer=me.user, rooms=rooms))
        for room in rooms:
            pending = await self.state.ledger.list_pending(me.tenant, room, SNAPSHOT_LIMIT)
            items = [await self.state.view(record) for record in pending]
            await self._reply(Snapshot(room=room, items=items))

    async def _live(self) -> None:
        tasks = [asyncio.create_task(self._send_loop(s)) for s in self.subscriptions]
        tasks.append(asyncio.create_task(self._receive_loop()))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
        for task in done:
            task.result()

    async def _send_loop(self, subscription: RoomSubscription) -> None:
        while True:
            batch = await subscription.next_batch()
            if subscription.overflowed:
                raise Close(p.CLOSE_RESUME_REQUIRED, ReviewResumeRequired())
            for data in batch:
                await self._write(data)

    async def _receive_loop(self) -> None:
        while True:
            deadline = self.last_activity + self.settings.ws_idle_timeout_s
            frame = await self._receive(until=deadline)
            try:
                match frame:
                    case Decide():
                        await self._decide(frame)
                    case ReviewPing():
                        await self._reply(ReviewPong())
                    case ReviewHello():
                        await self._reply(ReviewError(code="bad_frame", message="already greeted"))
                    case None:
                        pass
            except DocentError as exc:
                request_id = frame.request_id if isinstance(frame, Decide) else None
                await self._reply(error_frame(exc, request_id))

    async def _decide(self, frame: Decide) -> None:
        assert self.principal is not None
        decision = normalise_decision(frame.decision)
        result = await self.state.decide(self.principal, frame.approval_id, decision, frame.reason)
        await self._reply(result_frame(frame.request_id, result))

    async def _receive(self, until: float) -> ReviewClientFrame | None:
        while True:
            remaining = until - time.monotonic()
            if remaining <= 0:
                raise Close(
                    p.CLOSE_IDLE_TIMEOUT, ReviewError(code="idle_timeout", message="no activity: closing")
                )
            try:
                message = await asyncio.wait_for(self.ws.receive(), timeout=remaining)
            except TimeoutError:
                until = max(until, self.last_activity + self.settings.ws_idle_timeout_s)
                continue
            break
        if message["type"] == "websocket.disconnect":
            raise Disconnected()
        self.last_activity = time.monotonic()
        try:
            self.frames.take()
        except RateLimited as exc:
            raise Close(p.CLOSE_RATE_LIMITED, error_frame(exc)) from None
        data = message.get("text")
        if data is None:
            await self._reply(ReviewError(code="bad_frame", message="frames are JSON text, not binary"))
            return None
        if len(data.encode()) > self.settings.max_frame_bytes:
            too_large = ReviewError(code="frame_too_large", message="frame over the size limit")
            raise Close(p.CLOSE_FRAME_TOO_LARGE, too_large)
        try:
            return decode_client(data)
        except msgspec.DecodeError as exc:
            await self._reply(ReviewError(code="bad_frame", message=str(exc)))
            return None

    async def _reply(self, frame: ReviewServerFrame) -> None:
        await self._write(encode(frame))

    async def _write(self, data: bytes) -> None:
        async with self._write_lock:
            try:
                await self.ws.send_text(data.decode())
            except (WebSocketDisconnect, RuntimeError):
                raise Disconnected() from None
        self.last_activity = time.monotonic()

    async def _close(self, code: int, frame: ReviewServerFrame | None) -> None:
        if frame is not None:
            with contextlib.suppress(Disconnected, TimeoutError):
                await asyncio.wait_for(self._reply(frame), CLOSE_SEND_TIMEOUT_S)
        with contextlib.suppress(Exception):
            await self.ws.close(code)


async def review_endpoint(ws: WebSocket) -> None:
    await ReviewConnection(ws, review_state(ws.app)).run()


# ---- REST -------------------------------------------------------------------------------------------


class DecisionBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    decision: DecisionWord
    reason: Reason = ""


class DecisionOut(msgspec.Struct, frozen=True, kw_only=True):
    """One audit row: who decided what about which call, when and why."""

    approval_id: str
    conv_id: str
    tenant: str
    room: str
    tool: str
    args_hash: str
    requested_by: str
    outcome: State
    reviewer: str
    reason: str
    decided_ms: int
    created_ms: int


_decision_body = msgspec.json.Decoder(DecisionBody)


def _principal(request: Request) -> Principal:
    return request.app.state.services.auth.principal(bearer_token(request))  # type: ignore[no-any-return]


async def post_decision(request: Request) -> Response:
    state = review_state(request.app)
    me = _principal(request)
    try:
        body = _decision_body.decode(await request.body())
    except msgspec.DecodeError as exc:
        raise InputError(f"bad decision body: {exc}", field="body") from None
    result = await state.decide(
        me, request.path_params["approval_id"], normalise_decision(body.decision), body.reason
    )
    view = await state.view(result.record)
    if isinstance(result, Decided):
        return json_response({"ok": True, "approval": view})
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


async def get_approval(request: Request) -> Response:
    state = review_state(request.app)
    record = await state.visible(_principal(request), request.path_params["approval_id"])
    return json_response(await state.view(record))


async def list_approvals(request: Request) -> Response:
    """Pending approvals of one room (`?room=`), oldest first."""
    state = review_state(request.app)
    me = _principal(request)
    room = request.query_params.get("room", "general")
    if not is_identifier(room) or not may_see_room(me, room):
        raise ForbiddenError(f"you are not a reviewer of room {room}")
    pending = await state.ledger.list_pending(me.tenant, room, SNAPSHOT_LIMIT)
    return json_response({"room": room, "items": [await state.view(r) for r in pending]})


def _time_param(request: Request, name: str) -> int | None:
    """Milliseconds since the epoch, or an ISO 8601 time (UTC when it names no zone)."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if raw.isdigit():
        return int(raw)
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"{name} must be epoch milliseconds or an ISO 8601 time", field=name) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


async def admin_decisions(request: Request) -> Response:
    """GET /admin/decisions?tenant=&tool=&since=&until=&outcome=&limit= — newest first (admin key or an
    admin token of the tenant)."""
    services = request.app.state.services
    tenant = request.query_params.get("tenant")
    me = services.auth.admin(bearer_token(request), request.headers.get("x-admin-key"), tenant)
    tool = request.query_params.get("tool") or None
    if tool is not None and not is_identifier(tool):
        raise InputError("tool must be a tool name", field="tool")
    outcome: State | None
    match request.query_params.get("outcome") or None:
        case None:
            outcome = None
        case "approved" | "denied" | "expired" as word:
            outcome = word
        case _:
            raise InputError("outcome must be approved, denied or expired", field="outcome")
    raw_limit = request.query_params.get("limit", str(DECISIONS_LIMIT_DEFAULT))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= DECISIONS_LIMIT_MAX:
        raise InputError(f"limit must be 1-{DECISIONS_LIMIT_MAX}", field="limit")
    since, until = _time_param(request, "since") or 0, _time_param(request, "until")
    ledger = review_state(request.app).ledger
    records = await ledger.list_decisions(
        me.tenant,
        tool=tool,
        since_ms=since,
        until_ms=until,
        state=outcome,
        limit=int(raw_limit),
    )
    rows = [
        DecisionOut(
            approval_id=r.approval_id,
            conv_id=r.conv_id,
            tenant=r.tenant,
            room=r.room,
            tool=r.tool,
            args_hash=r.args_hash,
            requested_by=r.requested_by,
            outcome=r.state,
            reviewer=r.reviewer,
            reason=r.decision_reason,
            decided_ms=r.decided_ms,
            created_ms=r.created_ms,
        )
        for r in records
    ]
    return json_response({"tenant": me.tenant, "decisions": rows})


# ---- the console page -------------------------------------------------------------------------------

async def review_page(request: Request) -> Response:
    return render_page(request, "review.html")


def routes() -> list[BaseRoute]:
    return [
        Route("/review", review_page, methods=["GET"]),
        WebSocketRoute("/ws/review", review_endpoint),
        Route("/api/approvals", list_approvals, methods=["GET"]),
        Route("/api/approvals/{approval_id}", get_approval, methods=["GET"]),
        Route("/api/approvals/{approval_id}/decision", post_decision, methods=["POST"]),
        Route("/admin/decisions", admin_decisions, methods=["GET"]),
    ]
