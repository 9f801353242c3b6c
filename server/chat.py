"""/ws/chat: one socket, one conversation, as an explicit state machine.

    CONNECTING ──origin ok──▶ AWAITING_HELLO ──hello: authenticated, allowed──▶ STREAMING ──▶ CLOSED
        │                         │                                                 │
        └─ origin refused 4403    └─ no/bad token 4401, not yours 4403,             └─ idle 4408, flood 4429,
                                     no hello in time 4408                             too large 4413,
                                                                                       overflow 4409

STREAMING: the socket is subscribed to the shared fan-out, has replayed everything after the client's last
id, and runs two loops: the sender drains the subscription (dropping ids it already sent) and the receiver
handles ask / cancel / ping. Bad frames get a typed `error` frame and change nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
import uuid
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import msgspec
import redis
from starlette.websockets import WebSocket, WebSocketDisconnect

from server import protocol as p
from server.auth import Principal
from server.fanout import StreamKey, Subscription, id_key, replay
from server.limits import FrameBudget
from store.conversations import ConversationMeta, can_read, can_write
from store.events import TurnCancelled, UserMessage, now_ms
from store.exceptions import AuthError, DocentError, ForbiddenError, FrameError, RateLimited

if TYPE_CHECKING:
    from server.app import Services

HELLO_TIMEOUT_S = 10.0
RESUME_REQUIRED_SEND_TIMEOUT_S = 5.0

log = logging.getLogger(__name__)


class State(enum.Enum):
    CONNECTING = "connecting"
    AWAITING_HELLO = "awaiting_hello"
    STREAMING = "streaming"
    CLOSED = "closed"


class Close(Exception):
    """End the connection with `code`, after sending `frame` when there is one."""

    def __init__(self, code: int, frame: p.ServerFrame | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.frame = frame


class Disconnected(Exception):
    pass


def error_frame(exc: DocentError, client_message_id: str | None = None) -> p.ErrorFrame:
    retry = exc.details.get("retry_after_ms")
    return p.ErrorFrame(
        code=exc.code,
        message=exc.message,
        retry_after_ms=retry if isinstance(retry, int) else None,
        client_message_id=client_message_id,
    )


def close_for(exc: DocentError) -> Close:
    codes: dict[type[DocentError], int] = {
        AuthError: p.CLOSE_UNAUTHORIZED,
        ForbiddenError: p.CLOSE_FORBIDDEN,
        RateLimited: p.CLOSE_RATE_LIMITED,
    }
    return Close(codes.get(type(exc), p.CLOSE_UNAVAILABLE), error_frame(exc))


def origin_allowed(origin: str | None, host: str | None, allowed: frozenset[str]) -> bool:
    """Browsers send Origin: it must be this host or listed. Non-browser clients send none."""
    if origin is None:
        return True
    if "*" in allowed or origin.rstrip("/") in allowed:
        return True
    return bool(host) and urlsplit(origin).netloc == host


class ChatConnection:
    def __init__(self, ws: WebSocket, services: Services) -> None:
        self.ws = ws
        self.services = services
        self.settings = services.settings
        self.state = State.CONNECTING
        self.principal: Principal | None = None
        self.meta: ConversationMeta | None = None
        self.subscription: Subscription | None = None
        self.last_sent: StreamKey = (0, 0)
        self.last_sent_id: str | None = None
        self.last_activity = time.monotonic()
        self.frames = FrameBudget()
        self._write_lock = asyncio.Lock()
        self._sender: asyncio.Task[None] | None = None

    async def run(self) -> None:
        await self.ws.accept()
        try:
            try:
                self._check_origin()
                self.state = State.AWAITING_HELLO
                await self._greet()
                self.state = State.STREAMING
                await self._stream()
            except DocentError as exc:
                raise close_for(exc) from None
            except redis.RedisError as exc:
                log.warning("closing a socket: redis failed: %s", exc)
                unavailable = p.ErrorFrame(code="unavailable", message="storage unavailable: retry shortly")
                raise Close(p.CLOSE_UNAVAILABLE, unavailable) from None
        except Close as close:
            await self._close(close.code, close.frame)
        except (Disconnected, WebSocketDisconnect):
            pass
        finally:
            self.state = State.CLOSED
            if self._sender is not None:
                self._sender.cancel()
                with contextlib.suppress(BaseException):
                    await self._sender
            if self.subscription is not None:
                self.subscription.close()

    # ---- CONNECTING ----------------------------------------------------------------------------------

    def _check_origin(self) -> None:
        origin, host = self.ws.headers.get("origin"), self.ws.headers.get("host")
        if not origin_allowed(origin, host, self.services.allowed_origins):
            refusal = p.ErrorFrame(code="forbidden", message=f"origin {origin} not allowed")
            raise Close(p.CLOSE_FORBIDDEN, refusal)

    # ---- AWAITING_HELLO ------------------------------------------------------------------------------

    async def _greet(self) -> None:
        query_token = self.ws.query_params.get("token")
        if query_token is not None:
            self.principal = self.services.auth.principal(query_token)  # fail early, before any frame
        deadline = time.monotonic() + min(HELLO_TIMEOUT_S, self.settings.ws_idle_timeout_s)
        while True:
            frame = await self._receive(until=deadline, idle_code=p.CLOSE_IDLE_TIMEOUT)
            match frame:
                case p.Hello():
                    if frame.last_event_id is not None and frame.conversation_id is None:
                        refusal = p.ErrorFrame(
                            code="bad_frame", message="last_event_id needs conversation_id"
                        )
                        await self._reply(refusal)
                        continue
                    await self._hello(frame)
                    return
                case None:
                    continue
                case _:
                    await self._reply(p.ErrorFrame(code="bad_frame", message="the first frame must be hello"))

    async def _hello(self, hello: p.Hello) -> None:
        if hello.token is not None:
            self.principal = self.services.auth.principal(hello.token)
        if self.principal is None:
            raise AuthError("no token: pass ?token= or hello.token")
        me = self.principal
        conversations = self.services.conversations
        if hello.conversation_id is None:
            self.meta = await conversations.create(me.tenant, me.user)
        else:
            meta = await conversations.get(hello.conversation_id)
            if meta is None or not can_read(meta, me.tenant, me.user, me.roles):
                raise ForbiddenError("no such conversation, or not yours")
            self.meta = meta
        # Subscribe before replaying: whatever lands in between arrives through both, and is sent once.
        self.subscription = await self.services.fanout.subscribe(self.meta.id, self.settings.ws_send_buffer)
        if hello.last_event_id is not None:
            self.last_sent, self.last_sent_id = id_key(hello.last_event_id), hello.last_event_id
        await self._reply(p.Ready(conversation_id=self.meta.id, resumed_from=hello.last_event_id))
        async for page in replay(self.services.redis, self.meta.id, hello.last_event_id):
            for frame in page:
                await self._send_live(frame.key, frame.id, frame.data)

    # ---- STREAMING -----------------------------------------------------------------------------------

    async def _stream(self) -> None:
        self._sender = asyncio.create_task(self._send_loop())
        receiver = asyncio.create_task(self._receive_loop())
        try:
            done, _ = await asyncio.wait({self._sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            receiver.cancel()
            with contextlib.suppress(BaseException):
                await receiver
        for task in done:
            task.result()  # re-raise Close / Disconnected

    async def _send_loop(self) -> None:
        assert self.subscription is not None
        while True:
            batch = await self.subscription.next_batch()
            if self.subscription.overflowed:
                raise Close(p.CLOSE_RESUME_REQUIRED, p.ResumeRequired(last_event_id=self.last_sent_id))
            for frame in batch:
                await self._send_live(frame.key, frame.id, frame.data)

    async def _receive_loop(self) -> None:
        while True:
            deadline = self.last_activity + self.settings.ws_idle_timeout_s
            frame = await self._receive(until=deadline, idle_code=p.CLOSE_IDLE_TIMEOUT)
            try:
                match frame:
                    case p.Ask():
                        await self._ask(frame)
                    case p.Cancel():
                        await self._cancel()
                    case p.Ping():
                        await self._reply(p.Pong())
                    case p.Hello():
                        await self._reply(p.ErrorFrame(code="bad_frame", message="already greeted"))
                    case None:
                        pass
            except DocentError as exc:  # refused or failed: the client hears why, the socket stays open
                client_id = frame.client_message_id if isinstance(frame, p.Ask) else None
                await self._reply(error_frame(exc, client_id))

    async def _ask(self, ask: p.Ask) -> None:
        me, meta = self.principal, self.meta
        assert me is not None and meta is not None
        if not can_write(meta, me.tenant, me.user):
            raise ForbiddenError("only the conversation's owner may ask in it")
        text = ask.text.strip()
        if not text:
            raise FrameError("text is empty")
        if len(ask.text) > self.settings.max_question_chars:
            raise FrameError(f"text is longer than {self.settings.max_question_chars} characters")
        await self.services.limits.check_ask(me)
        item = UserMessage(
            text=text,
            mode=ask.mode,
            user=me.user,
            tenant=me.tenant,
            groups=me.groups,
            client_message_id=ask.client_message_id,
            at_ms=now_ms(),
        )
        await self.services.dispatcher.submit(meta.id, item, dedup_id=ask.client_message_id)
        await self.services.conversations.record_ask(meta, text)
        await self._reply(p.Accepted(client_message_id=ask.client_message_id))

    async def _cancel(self) -> None:
        me, meta = self.principal, self.meta
        assert me is not None and meta is not None
        if not can_write(meta, me.tenant, me.user):
            raise ForbiddenError("only the conversation's owner may cancel")
        item = TurnCancelled(by=me.user, at_ms=now_ms())
        await self.services.dispatcher.submit(meta.id, item, dedup_id=f"cancel-{uuid.uuid4().hex}")

    # ---- frames in and out ---------------------------------------------------------------------------

    async def _receive(self, until: float, idle_code: int) -> p.ClientFrame | None:
        """The next valid client frame; None after answering a bad one with an error frame."""
        while True:
            remaining = until - time.monotonic()
            if remaining <= 0:
                raise Close(idle_code, p.ErrorFrame(code="idle_timeout", message="no activity: closing"))
            try:
                message = await asyncio.wait_for(self.ws.receive(), timeout=remaining)
            except TimeoutError:
                if self.state is State.STREAMING:
                    until = self.last_activity + self.settings.ws_idle_timeout_s  # we may have sent since
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
            await self._reply(p.ErrorFrame(code="bad_frame", message="frames are JSON text, not binary"))
            return None
        size = len(data.encode())
        if size > self.settings.max_frame_bytes:
            message_text = f"frame of {size} bytes is over the {self.settings.max_frame_bytes} byte limit"
            raise Close(p.CLOSE_FRAME_TOO_LARGE, p.ErrorFrame(code="frame_too_large", message=message_text))
        try:
            return p.decode_client(data)
        except msgspec.DecodeError as exc:
            await self._reply(p.ErrorFrame(code="bad_frame", message=str(exc)))
            return None

    async def _send_live(self, key: StreamKey, entry_id: str, data: bytes) -> None:
        if key <= self.last_sent:
            return
        await self._write(data)
        self.last_sent, self.last_sent_id = key, entry_id

    async def _reply(self, frame: p.ServerFrame) -> None:
        await self._write(p.encode(frame))

    async def _write(self, data: bytes) -> None:
        async with self._write_lock:
            try:
                await self.ws.send_text(data.decode())
            except (WebSocketDisconnect, RuntimeError):
                raise Disconnected() from None
        self.last_activity = time.monotonic()

    async def _close(self, code: int, frame: p.ServerFrame | None) -> None:
        if frame is not None:
            with contextlib.suppress(Disconnected, TimeoutError):
                await asyncio.wait_for(self._reply(frame), RESUME_REQUIRED_SEND_TIMEOUT_S)
        # Keep reading while closing: a client whose unread frames fill the protocol's queue could not
        # complete the closing handshake otherwise (the close would hang until the protocol's timeout).
        drain = asyncio.create_task(self._discard_incoming())
        try:
            with contextlib.suppress(Exception):
                await self.ws.close(code)
        finally:
            drain.cancel()
            with contextlib.suppress(BaseException):
                await drain

    async def _discard_incoming(self) -> None:
        with contextlib.suppress(Exception):
            while (await self.ws.receive())["type"] != "websocket.disconnect":
                pass


async def chat_endpoint(ws: WebSocket) -> None:
    await ChatConnection(ws, ws.app.state.services).run()
