"""One WebSocket session, its protocol owned once; each endpoint (/ws/chat, /ws/review, /ws/admin) is a
subclass that fills in the hooks, as starlette's WebSocketEndpoint does for its three callbacks.

    CONNECTING ──origin ok──▶ AWAITING_HELLO ──hello handled──▶ LIVE ──▶ CLOSED
        │                         │                              │
        └─ origin refused 4403    └─ no/bad token 4401,          └─ idle 4408, flood 4429, too large 4413,
                                     forbidden 4403, too many       overflow 4409, Redis down 4503
                                     sockets 4429, no hello in
                                     time 4408

The base owns: the origin check, the hello deadline and idle timeout, the per-socket frame budget, the
frame size limit, decoding with the endpoint's typed decoder, the close-code map, one writer at a time,
the send loops that drain the endpoint's hub subscriptions (overflow → `resume_required` and 4409) and the
direct writes that spare them a wake-up per frame while the socket keeps up (`write_now`), the
per-user and per-tenant socket slots, and a close that keeps reading so it cannot hang. Endpoints supply
`connected` (before any frame), `hello`, `handle` (every frame after it but `ping`), and optionally
`refusal` (how an error names the frame it answers) and `resume_frame`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from server import protocol as p
from server.auth import Principal
from server.buffer import Sink
from server.hub import Subscription
from server.limits import FrameBudget, SocketSlot
from server.ws_protocol import frame_writer
from store.exceptions import AuthError, DocentError, ForbiddenError, FrameError, RateLimited
from store.redis import REDIS_ERRORS

if TYPE_CHECKING:
    from server.services import Services

HELLO_TIMEOUT_S = 10.0
CLOSE_SEND_TIMEOUT_S = 5.0

CLOSE_CODES: tuple[tuple[type[DocentError], int], ...] = (
    (AuthError, p.CLOSE_UNAUTHORIZED),
    (ForbiddenError, p.CLOSE_FORBIDDEN),
    (RateLimited, p.CLOSE_RATE_LIMITED),
)

log = logging.getLogger(__name__)

Send = Callable[[list[Any]], Awaitable[None]]


class State(enum.Enum):
    CONNECTING = "connecting"
    AWAITING_HELLO = "awaiting_hello"
    LIVE = "live"
    CLOSED = "closed"


class Close(Exception):
    """End the connection with `code`, after sending `frame` when there is one."""

    def __init__(self, code: int, frame: msgspec.Struct | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.frame = frame


class Disconnected(Exception):
    pass


def error_frame(exc: DocentError, **correlation: str | None) -> p.ErrorFrame:
    retry = exc.details.get("retry_after_ms")
    return p.ErrorFrame(
        code=exc.code,
        message=exc.message,
        retry_after_ms=retry if isinstance(retry, int) else None,
        **correlation,
    )


def close_for(exc: DocentError) -> Close:
    code = next((c for kind, c in CLOSE_CODES if isinstance(exc, kind)), p.CLOSE_UNAVAILABLE)
    return Close(code, error_frame(exc))


def origin_allowed(origin: str | None, host: str | None, allowed: frozenset[str]) -> bool:
    """Browsers send Origin: it must be this host or listed. Non-browser clients send none."""
    if origin is None:
        return True
    if "*" in allowed or origin.rstrip("/") in allowed:
        return True
    return bool(host) and urlsplit(origin).netloc == host


class Session:
    decoder: ClassVar[msgspec.json.Decoder[Any]]
    hello_type: ClassVar[type[msgspec.Struct] | None] = None  # None: greeted on connect, no hello frame

    def __init__(self, ws: WebSocket, services: Services) -> None:
        self.ws = ws
        self.services = services
        self.settings = services.settings
        self.state = State.CONNECTING
        self.principal: Principal | None = None
        self.last_activity = time.monotonic()
        self.frames = FrameBudget()
        self._feeds: list[tuple[Subscription[Any], Send, Sink[Any] | None]] = []
        self._direct = frame_writer(ws)  # None: every frame goes through the ASGI send
        self._slot: SocketSlot | None = None
        self._write_lock = asyncio.Lock()

    # ---- the hooks -----------------------------------------------------------------------------------

    async def connected(self) -> None:
        """Before any frame: a token in the URL is checked at once."""
        query_token = self.ws.query_params.get("token")
        if query_token is not None:
            self.principal = self.services.auth.principal(query_token)

    async def hello(self, frame: Any) -> None:
        """The first frame; FrameError answers it and keeps waiting for a good one."""

    async def handle(self, frame: Any) -> None:
        """A frame after the hello (never `ping`); DocentError answers it and keeps the socket open."""
        await self.reply(p.ErrorFrame(code="bad_frame", message=f"unexpected {type(frame).__name__} frame"))

    def refusal(self, exc: DocentError, frame: Any) -> p.ErrorFrame:
        return error_frame(exc)

    def resume_frame(self) -> p.ResumeRequired:
        return p.ResumeRequired()

    # ---- what endpoints call -------------------------------------------------------------------------

    def sign_in(self, hello_token: str | None) -> Principal:
        """The caller (a hello token overrides the URL's), holding one of its user's and tenant's socket
        slots from now until the socket closes."""
        if hello_token is not None:
            self.principal = self.services.auth.principal(hello_token)
        if self.principal is None:
            raise AuthError("no token: pass ?token= or hello.token")
        if self._slot is None:
            self._slot = self.services.sockets.take(self.principal)
        return self.principal

    def follow(self, subscription: Subscription[Any], send: Send, send_now: Sink[Any] | None = None) -> None:
        """Drain `subscription` into `send` while LIVE; closed with the socket. With `send_now` (which
        writes with `write_now`) the hub's reads are written at once while the socket keeps up, and only
        what it cannot take waits for `send` (server.buffer)."""
        self._feeds.append((subscription, send, send_now))

    async def reply(self, frame: msgspec.Struct) -> None:
        await self.write(p.encode(frame))

    async def write(self, data: bytes) -> None:
        async with self._write_lock:
            try:
                await self.ws.send_text(data.decode())
            except (WebSocketDisconnect, RuntimeError):
                raise Disconnected() from None
        self.last_activity = time.monotonic()

    def write_now(self, frame: bytes) -> bool:
        """`frame` (a `server.ws_protocol.text_frame`) written without waiting; False, with nothing
        written, while another write waits, the socket is not open or its transport is paused (the
        caller's items then queue for its `send`), or the server offers no direct write."""
        direct = self._direct
        if direct is None or self._write_lock.locked() or not direct.write_frame(frame):
            return False
        self.last_activity = time.monotonic()
        return True

    # ---- the state machine ---------------------------------------------------------------------------

    async def run(self) -> None:
        await self.ws.accept()
        try:
            try:
                await self._run()
            except DocentError as exc:
                raise close_for(exc) from None
            except REDIS_ERRORS as exc:
                log.warning("closing a socket: redis failed: %s", exc)
                unavailable = p.ErrorFrame(code="unavailable", message="storage unavailable: retry shortly")
                raise Close(p.CLOSE_UNAVAILABLE, unavailable) from None
        except Close as close:
            await self._close(close.code, close.frame)
        except (Disconnected, WebSocketDisconnect):
            pass
        finally:
            self.state = State.CLOSED
            self._release()

    async def _run(self) -> None:
        origin, host = self.ws.headers.get("origin"), self.ws.headers.get("host")
        if not origin_allowed(origin, host, self.services.allowed_origins):
            refusal = p.ErrorFrame(code="forbidden", message=f"origin {origin} not allowed")
            raise Close(p.CLOSE_FORBIDDEN, refusal)
        self.state = State.AWAITING_HELLO
        await self.connected()
        if self.hello_type is not None:
            await self._greet()
        self.state = State.LIVE
        await self._live()

    def _release(self) -> None:
        for subscription, _, _ in self._feeds:
            subscription.close()
        if self._slot is not None:
            self._slot.release()

    async def _greet(self) -> None:
        deadline = time.monotonic() + min(HELLO_TIMEOUT_S, self.settings.ws_idle_timeout_s)
        while True:
            frame = await self._receive(until=deadline)
            if frame is None:
                continue
            if not isinstance(frame, self.hello_type):  # type: ignore[arg-type]
                await self.reply(p.ErrorFrame(code="bad_frame", message="the first frame must be hello"))
                continue
            try:
                return await self.hello(frame)
            except FrameError as exc:
                await self.reply(error_frame(exc))

    async def _live(self) -> None:
        if self._direct is not None:
            for subscription, _, send_now in self._feeds:
                subscription.sink = send_now  # queued items first: the pump sends them, then the sink
        tasks = [asyncio.create_task(self._pump(sub, send)) for sub, send, _ in self._feeds]
        tasks.append(asyncio.create_task(self._receive_loop()))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for subscription, _, _ in self._feeds:
                subscription.sink = None  # nothing is written around the closing frames
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
        for task in done:
            task.result()  # re-raise Close / Disconnected

    async def _pump(self, subscription: Subscription[Any], send: Send) -> None:
        while True:
            batch = await subscription.next_batch()
            if subscription.overflowed:
                raise Close(p.CLOSE_RESUME_REQUIRED, self.resume_frame())
            await send(batch)

    async def _receive_loop(self) -> None:
        while True:
            frame = await self._receive(until=self.last_activity + self.settings.ws_idle_timeout_s)
            try:
                await self._dispatch(frame)
            except DocentError as exc:  # refused or failed: the client hears why, the socket stays open
                await self.reply(self.refusal(exc, frame))

    async def _dispatch(self, frame: Any) -> None:
        match frame:
            case None:
                pass
            case p.Ping():
                await self.reply(p.Pong())
            case _ if self.hello_type is not None and isinstance(frame, self.hello_type):
                await self.reply(p.ErrorFrame(code="bad_frame", message="already greeted"))
            case _:
                await self.handle(frame)

    # ---- frames in -----------------------------------------------------------------------------------

    async def _receive(self, until: float) -> Any:
        """The next valid client frame; None after answering a bad one with an error frame."""
        message = await self._next_message(until)
        if message["type"] == "websocket.disconnect":
            raise Disconnected()
        self.last_activity = time.monotonic()
        try:
            self.frames.take()
        except RateLimited as exc:
            raise Close(p.CLOSE_RATE_LIMITED, error_frame(exc)) from None
        data = message.get("text")
        if data is None:
            await self.reply(p.ErrorFrame(code="bad_frame", message="frames are JSON text, not binary"))
            return None
        self._check_size(data)
        try:
            return self.decoder.decode(data)
        except msgspec.DecodeError as exc:
            await self.reply(p.ErrorFrame(code="bad_frame", message=str(exc)))
            return None

    async def _next_message(self, until: float) -> Any:
        while True:
            remaining = until - time.monotonic()
            if remaining <= 0:
                idle = p.ErrorFrame(code="idle_timeout", message="no activity: closing")
                raise Close(p.CLOSE_IDLE_TIMEOUT, idle)
            try:  # asyncio.timeout, not wait_for: no task per socket wrapped around its receive
                async with asyncio.timeout(remaining):
                    return await self.ws.receive()
            except TimeoutError:
                if self.state is State.LIVE:
                    until = self.last_activity + self.settings.ws_idle_timeout_s  # we may have sent since

    def _check_size(self, data: str) -> None:
        size = len(data.encode())
        if size > self.settings.max_frame_bytes:
            message = f"frame of {size} bytes is over the {self.settings.max_frame_bytes} byte limit"
            raise Close(p.CLOSE_FRAME_TOO_LARGE, p.ErrorFrame(code="frame_too_large", message=message))

    # ---- closing -------------------------------------------------------------------------------------

    async def _close(self, code: int, frame: msgspec.Struct | None) -> None:
        if frame is not None:
            with contextlib.suppress(Disconnected, TimeoutError):
                await asyncio.wait_for(self.reply(frame), CLOSE_SEND_TIMEOUT_S)
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
