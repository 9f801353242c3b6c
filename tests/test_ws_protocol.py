"""server.ws_protocol: frames built once are what websockets' own parser reads, and uvicorn's protocol
offers their direct write to the app, in order with the ASGI sends, over a real socket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from actors.testing.ports import listening_socket
from server.app import uvicorn_options
from server.ws_protocol import DirectWriteProtocol, frame_writer, text_frame
from store.settings import Settings

WAIT_S = 5.0
BIG_PAD_CHARS = 70_000  # over 65,535: the 64-bit length, and over the transport's 64 KiB high-water mark


def parsed(data: bytes) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
        return frame
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65_535, 65_536, 200_000])
def test_a_text_frame_is_what_websockets_parses(size: int) -> None:
    payload = b"x" * size
    frame = parsed(text_frame(payload))
    assert frame.opcode is Opcode.TEXT and frame.fin and frame.data == payload


def test_the_web_process_serves_sockets_with_the_direct_write_protocol() -> None:
    config = uvicorn.Config(Starlette(), **uvicorn_options(Settings()))
    config.load()
    assert config.ws_protocol_class is DirectWriteProtocol


async def endpoint(ws: WebSocket) -> None:
    await ws.accept()
    writer = frame_writer(ws)
    assert writer is not None
    big = json.dumps({"n": 2, "pad": "x" * BIG_PAD_CHARS}).encode()
    written = [writer.write_frame(text_frame(b'{"n": 1}')), writer.write_frame(text_frame(big))]
    await ws.send_text(json.dumps({"n": 3, "written": written}))
    await ws.close()
    ws.app.state.after_close = writer.write_frame(text_frame(b'{"n": 4}'))


@pytest.fixture(params=[False, True], ids=["plain", "deflate"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, Starlette, bool]]:
    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    listener = listening_socket()
    port = listener.getsockname()[1]
    deflate: bool = request.param
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, ws=DirectWriteProtocol, ws_per_message_deflate=deflate,
        log_level="warning",
    )  # fmt: skip
    served = uvicorn.Server(config)
    task = asyncio.create_task(served.serve(sockets=[listener]))
    while not served.started:
        await asyncio.sleep(0.01)
    yield f"ws://127.0.0.1:{port}/ws", app, deflate
    served.should_exit = True
    await asyncio.wait_for(task, WAIT_S)


async def test_direct_writes_reach_the_client_in_order_with_the_asgi_sends(
    server: tuple[str, Starlette, bool],
) -> None:
    """Without extensions the frames are written as they are; with permessage-deflate negotiated (the
    web process never offers it) a direct write is refused and the caller's ASGI send does the work."""
    url, app, deflate = server
    got: list[dict[str, Any]] = []
    async with connect(url) as ws:
        async for message in ws:
            got.append(json.loads(message))
    if deflate:
        assert got == [{"n": 3, "written": [False, False]}]
    else:
        assert [m["n"] for m in got] == [1, 2, 3]
        assert got[2]["written"] == [True, True]
    assert app.state.after_close is False  # a closing socket is never written to directly
