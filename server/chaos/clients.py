"""The cluster chaos runner's users: real WebSocket clients that ask, reconnect and resume.

Each `ChaosClient` is one user and one conversation on `/ws/chat`. It asks its asks one after the other;
an ask is sent again (same `client_message_id`, so it is taken once) until the server acknowledges it
(`accepted`), and the client then follows the conversation until that ask's turn ends (a terminal event
of the turn its `user_message` opened). Whenever its socket dies (a killed web process, a `unavailable`
close while a Redis primary fails over, a timeout) it reconnects to the next web process and resumes from
the last id it saw. The `Ask` records are the ledger the report checks against the durable log: an ask
acknowledged here must be in the log at the end.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

TERMINAL_TYPES = frozenset({"answer_completed", "turn_failed", "turn_cancelled", "limit_reached"})
TURN_TIMEOUT_S = 90.0
FRAME_TIMEOUT_S = 10.0  # silence this long on a socket: reconnect (a half-dead web process)
OPEN_TIMEOUT_S = 5.0
RECONNECT_PAUSE_S = 0.2


@dataclass
class Ask:
    client_message_id: str
    text: str
    mode: str
    sent_at: float = 0.0
    ack_ms: float | None = None  # first send -> `accepted`; None: never acknowledged
    sends: int = 0
    outcome: str = ""  # the terminal event type the client saw, or "timeout"


@dataclass
class ChaosClient:
    urls: list[str]
    token: str
    asks: list[Ask]
    conversation_id: str = ""
    last_event_id: str = ""
    reconnects: int = 0
    refusals: dict[str, int] = field(default_factory=dict)  # error codes the server answered with
    _web: int = 0

    async def run(self) -> None:
        for ask in self.asks:
            await self._turn(ask)

    async def _turn(self, ask: Ask) -> None:
        deadline = time.monotonic() + TURN_TIMEOUT_S
        turn: list[int] = []  # the turn the ask's user_message opened, once seen
        while time.monotonic() < deadline:
            try:
                ws = await self._connect()
            except (OSError, TimeoutError, WebSocketException, ValueError):
                await self._next_web()
                continue
            try:
                if await self._follow(ws, ask, turn, deadline):
                    return
            except (OSError, TimeoutError, WebSocketException):
                pass
            finally:
                await ws.close()
            await self._next_web()
        ask.outcome = ask.outcome or "timeout"

    async def _connect(self) -> ClientConnection:
        ws = await connect(self.urls[self._web], open_timeout=OPEN_TIMEOUT_S, compression=None)
        hello: dict[str, Any] = {"type": "hello", "token": self.token}
        if self.conversation_id:
            hello["conversation_id"] = self.conversation_id
            if self.last_event_id:
                hello["last_event_id"] = self.last_event_id
        await ws.send(json.dumps(hello))
        ready = await self._recv(ws)
        if ready.get("type") != "ready":
            await ws.close()
            raise ValueError(f"not greeted: {ready}")
        self.conversation_id = ready["conversation_id"]
        return ws

    async def _follow(self, ws: ClientConnection, ask: Ask, turn: list[int], deadline: float) -> bool:
        """Send the ask unless acknowledged, read until its turn ends (True) or the socket fails (False)."""
        if ask.ack_ms is None:
            await self._send(ws, ask)
        while time.monotonic() < deadline:
            frame = await self._recv(ws)
            kind = frame.get("type")
            if kind == "accepted" and frame.get("client_message_id") == ask.client_message_id:
                ask.ack_ms = ask.ack_ms if ask.ack_ms is not None else (time.monotonic() - ask.sent_at) * 1000
            elif kind == "error":
                code = str(frame.get("code"))
                self.refusals[code] = self.refusals.get(code, 0) + 1
                return False  # an ask refused (`unavailable`) is sent again on the next socket
            elif kind in {"event", "delta"}:
                self.last_event_id = frame["id"]
                if kind == "event" and self._ends(frame["event"], ask, turn):
                    return True
        return False

    @staticmethod
    def _ends(event: dict[str, Any], ask: Ask, turn: list[int]) -> bool:
        if event["type"] == "user_message" and event.get("client_message_id") == ask.client_message_id:
            turn[:] = [int(event["turn"])]
        elif turn and event["type"] in TERMINAL_TYPES and int(event.get("turn", 0)) == turn[0]:
            ask.outcome = event["type"]
            return True
        return False

    async def _send(self, ws: ClientConnection, ask: Ask) -> None:
        if not ask.sends:
            ask.sent_at = time.monotonic()
        ask.sends += 1
        frame = {"type": "ask", "text": ask.text, "mode": ask.mode}
        await ws.send(json.dumps({**frame, "client_message_id": ask.client_message_id}))

    @staticmethod
    async def _recv(ws: ClientConnection) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT_S))  # type: ignore[no-any-return]

    async def _next_web(self) -> None:
        self._web = (self._web + 1) % len(self.urls)
        self.reconnects += 1
        await asyncio.sleep(RECONNECT_PAUSE_S)
