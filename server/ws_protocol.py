"""Pre-built WebSocket frames written straight to a socket's transport, for the live relay.

The hub encodes each live event's server frame once; at one event per socket write, the ASGI send path
(starlette's `send_text`, uvicorn's `send` awaiting `writable`, websockets' frame assembly, a join) cost
more than the event's own work. `text_frame` builds the RFC 6455 frame of a payload once (a server's
frames are unmasked, so the same bytes go to every socket), and `DirectWriteProtocol` (uvicorn's sans-I/O
websockets protocol, named by `server.app.uvicorn_options`) lets a session write those bytes with one
`transport.write`, synchronously, from the hub's read, with no task wake-up.

A direct write is refused (`write_frame` returns False, and the caller falls back to the awaited ASGI
send) whenever it could be wrong or unbounded: the transport is paused (over its high-water mark: the
client is slow, and the caller's bounded buffer then overflows as before), the socket is closing or
closed, or an extension (permessage-deflate) is negotiated. The protocol hands itself to the app in the
ASGI scope's extensions under DIRECT_WRITE_EXTENSION; an app served another way finds nothing there
and uses the ASGI send alone.

Its keepalive is the process's one timer (`server.keepalive`) instead of uvicorn's two timers per socket:
any frame received counts as the peer's answer, and a silent peer gets the shared PING_FRAME.
"""

from __future__ import annotations

from typing import Any, Protocol

from starlette.websockets import WebSocket
from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.frames import Frame
from websockets.http11 import Request
from websockets.protocol import State

from server.keepalive import PING_FRAME, Keepalive, keepalive_for, period_for

DIRECT_WRITE_EXTENSION = "docent.direct_write"
OPCODE_TEXT_FIN = 0x81
SHORT_PAYLOAD_BYTES = 125  # lengths up to this fit the header's 7 bits
MEDIUM_PAYLOAD_BYTES = 0xFFFF  # then 16 bits, past it 64
LENGTH_16 = 126
LENGTH_64 = 127


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame carrying `payload` (UTF-8 JSON), as a server sends it."""
    size = len(payload)
    if size <= SHORT_PAYLOAD_BYTES:
        header = bytes((OPCODE_TEXT_FIN, size))
    elif size <= MEDIUM_PAYLOAD_BYTES:
        header = bytes((OPCODE_TEXT_FIN, LENGTH_16)) + size.to_bytes(2, "big")
    else:
        header = bytes((OPCODE_TEXT_FIN, LENGTH_64)) + size.to_bytes(8, "big")
    return header + payload


class FrameWriter(Protocol):
    def write_frame(self, frame: bytes) -> bool: ...


class DirectWriteProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O protocol, offering `write_frame` to the app through the scope, kept alive by the
    process's one keepalive timer."""

    def __init__(
        self, config: Config, server_state: ServerState, app_state: dict[str, Any], **kw: Any
    ) -> None:
        super().__init__(config, server_state, app_state, **kw)
        self.heard = True
        self.pinged = False
        self.keepalive: Keepalive | None = None

    def data_received(self, data: bytes) -> None:
        self.heard = True  # any frame, or part of one, is the peer's sign of life
        super().data_received(data)

    def start_keepalive(self) -> None:
        if self.ping_interval is not None and self.ping_interval > 0:
            self.keepalive = keepalive_for(self.loop, period_for(self.ping_interval, self.ping_timeout))
            self.keepalive.add(self)

    def stop_keepalive(self) -> None:
        super().stop_keepalive()
        if self.keepalive is not None:
            self.keepalive.remove(self)
            self.keepalive = None

    def handle_pong(self, event: Frame) -> None:
        """Nothing to match: data_received already counted it."""

    def send_ping_frame(self) -> bool:
        if self.close_sent or self.disconnected or self.conn.state is not State.OPEN:
            return False
        if self.transport.is_closing():
            return False
        self.transport.write(PING_FRAME)  # even while paused: a peer that reads nothing is failed next visit
        return True

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope: Any = getattr(self, "scope", None)  # None: the handshake was refused
        if scope is not None and not self.close_sent:
            scope["extensions"][DIRECT_WRITE_EXTENSION] = self  # before the app's task first runs

    def write_frame(self, frame: bytes) -> bool:
        """`frame` (a complete frame from `text_frame`) written now; False (nothing written) when the
        socket is not open, its transport is paused, or an extension would need the frame rewritten."""
        if self.close_sent or self.disconnected or not self.writable.is_set() or self.conn.extensions:
            return False
        if self.conn.state is not State.OPEN or self.transport.is_closing():
            return False
        self.transport.write(frame)
        return True


def frame_writer(ws: WebSocket) -> FrameWriter | None:
    """The direct writer of `ws`'s connection, when the server offers one."""
    writer = ws.scope.get("extensions", {}).get(DIRECT_WRITE_EXTENSION)
    return writer if isinstance(writer, DirectWriteProtocol) else None
