"""server.keepalive through server.ws_protocol's protocol under a real uvicorn, over real sockets: a peer
that never answers is pinged once and failed (1011) within ping interval + timeout of its last frame, as
uvicorn's own keepalive bounds it; a peer that answers pings stays; a peer that pings us is never pinged;
and a closed socket leaves the process's one keepalive timer."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import AsyncIterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.frames import Frame, Opcode

from actors.testing.ports import listening_socket
from server.keepalive import keepalive_for, period_for
from server.ws_protocol import DirectWriteProtocol

INTERVAL_S = 0.3
TIMEOUT_S = 0.3
BOUND_S = INTERVAL_S + TIMEOUT_S  # uvicorn's: a ping every interval, failed after timeout without a pong
LOOP_SLACK_S = 1.0  # the loop's own delays on a loaded machine, on top of the bound
WAIT_S = 5.0
WATCH_S = 1.5  # five bounds: a live peer would have been failed several times over
OP_PING, OP_PONG, OP_CLOSE = 0x9, 0xA, 0x8
KEEPALIVE_FAILURE = 1011


async def endpoint(ws: WebSocket) -> None:
    await ws.accept()
    with pytest.raises(WebSocketDisconnect):
        while True:
            await ws.receive_text()


@pytest.fixture
async def url() -> AsyncIterator[tuple[str, int]]:
    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    listener = listening_socket()
    port = listener.getsockname()[1]
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, ws=DirectWriteProtocol, ws_ping_interval=INTERVAL_S,
        ws_ping_timeout=TIMEOUT_S, log_level="warning",
    )  # fmt: skip
    served = uvicorn.Server(config)
    task = asyncio.create_task(served.serve(sockets=[listener]))
    while not served.started:
        await asyncio.sleep(0.01)
    yield "127.0.0.1", port
    served.should_exit = True
    await asyncio.wait_for(task, WAIT_S)


class RawPeer:
    """A WebSocket client on a bare TCP socket: it answers only what the test tells it to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buffer = b""
        self.eof = False

    @classmethod
    async def open(cls, host: str, port: int) -> RawPeer:
        reader, writer = await asyncio.open_connection(host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
        assert head.startswith(b"HTTP/1.1 101")
        return cls(reader, writer)

    async def frame(self, timeout_s: float) -> tuple[int, bytes] | None:
        """The server's next frame (opcode, payload: all short here); None at EOF or after timeout_s."""
        while len(self.buffer) < 2 or len(self.buffer) < 2 + (self.buffer[1] & 0x7F):
            try:
                data = await asyncio.wait_for(self.reader.read(4096), timeout_s)
            except TimeoutError:
                return None
            if not data:
                self.eof = True
                return None
            self.buffer += data
        size = self.buffer[1] & 0x7F
        assert size < 126 and not self.buffer[1] & 0x80  # short and unmasked, as a server's pings are
        frame, self.buffer = self.buffer[: 2 + size], self.buffer[2 + size :]
        return frame[0] & 0x0F, frame[2:]

    def send(self, opcode: Opcode, payload: bytes = b"") -> None:
        self.writer.write(Frame(opcode, payload).serialize(mask=True, extensions=[]))

    def close(self) -> None:
        self.writer.close()


async def test_a_silent_peer_is_pinged_once_then_failed_within_the_bound(url: tuple[str, int]) -> None:
    peer = await RawPeer.open(*url)
    opened = time.monotonic()
    frames = []
    while (frame := await peer.frame(WAIT_S)) is not None:
        frames.append((frame, time.monotonic() - opened))
    assert [opcode for (opcode, _), _ in frames] == [OP_PING, OP_CLOSE]
    assert int.from_bytes(frames[1][0][1][:2], "big") == KEEPALIVE_FAILURE
    failed_after = frames[1][1]
    assert failed_after > period_for(INTERVAL_S, TIMEOUT_S)  # at least a period to answer its ping
    assert failed_after < BOUND_S + LOOP_SLACK_S
    keepalive = keepalive_for(asyncio.get_running_loop(), period_for(INTERVAL_S, TIMEOUT_S))
    for _ in range(100):
        if not keepalive.members:
            break
        await asyncio.sleep(0.02)
    assert not keepalive.members  # the closed socket left the buckets; the timer stopped with the last one
    assert keepalive._timer is None
    peer.close()


async def test_a_peer_that_answers_pings_stays_open(url: tuple[str, int]) -> None:
    peer = await RawPeer.open(*url)
    pings = 0
    deadline = time.monotonic() + WATCH_S
    while (left := deadline - time.monotonic()) > 0:
        frame = await peer.frame(left)
        if frame is None:
            break
        assert frame[0] == OP_PING
        pings += 1
        peer.send(Opcode.PONG)
    assert not peer.eof
    assert pings >= 2  # pinged every two periods while silent
    peer.close()


async def test_a_peer_that_pings_the_server_is_never_pinged(url: tuple[str, int]) -> None:
    """Its own pings are the sign of life (the websockets client pings every 20 s): the server answers
    them and sends no ping of its own."""
    peer = await RawPeer.open(*url)
    got = []
    deadline = time.monotonic() + WATCH_S
    while time.monotonic() < deadline:
        peer.send(Opcode.PING, b"p")
        while (frame := await peer.frame(0.05)) is not None:
            got.append(frame[0])
    assert not peer.eof
    assert got and set(got) == {OP_PONG}
    peer.close()
