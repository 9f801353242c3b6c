"""The cluster chaos runner's users: real WebSocket clients that ask, reconnect and resume.

Each `ChaosClient` is one user and one conversation on `/ws/chat`. It sends its asks in order, the next one
`ASK_PAUSE_S` after the previous one was acknowledged (`accepted`), without waiting for its answer (asks
made while a turn runs wait in the inbox, so the asks keep coming while the faults land); an ask is sent
again (same `client_message_id`, so it is taken once) until it is acknowledged. The client follows the
conversation until the turn of every ask has ended (a terminal event of the turn its `user_message`
opened). Whenever its socket dies (a killed web process, an `unavailable` close while a Redis primary
fails over, silence) it reconnects to the next web process and resumes from the last id it saw. The `Ask`
records are the ledger the report checks against the durable log: an acknowledged ask must be in it.
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
RUN_TIMEOUT_S = 120.0  # a conversation's asks all answered within this, or the rest count as timed out
FRAME_TIMEOUT_S = 10.0  # silence this long on a socket: reconnect (a half-dead web process)
OPEN_TIMEOUT_S = 5.0
RECONNECT_PAUSE_S = 0.2
ASK_PAUSE_S = 0.3


class NotGreeted(Exception):
    """The server answered a hello with something else than `ready` (its error code is the message)."""


@dataclass
class Ask:
    client_message_id: str
    text: str
    mode: str
    sent_at: float = 0.0
    ack_ms: float | None = None  # first send -> `accepted`; None: never acknowledged
    acked_at: float = 0.0  # time.monotonic() of the `accepted`
    sends: int = 0
    last_sent_at: float = 0.0  # time.monotonic() of the latest send
    last_url: str = ""  # the web process the latest send went to
    turn: int = 0  # the turn its user_message opened, once seen
    outcome: str = ""  # the terminal event type the client saw, or "timeout"


@dataclass
class ChaosClient:
    urls: list[str]
    token: str
    asks: list[Ask]
    conversation_id: str = ""
    last_event_id: str = ""
    asking: bool = False  # an ask sent and not acknowledged yet
    reconnects: dict[str, int] = field(default_factory=dict)  # why the client reconnected: how often
    refusals: dict[str, int] = field(default_factory=dict)  # error codes the server answered with
    _web: int = 0

    async def run(self) -> None:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                ws = await self._connect()
            except NotGreeted as exc:
                await self._next_web(f"hello refused: {exc}")
                continue
            except (OSError, TimeoutError, WebSocketException) as exc:
                await self._next_web(f"connect: {type(exc).__name__}")
                continue
            try:
                if await self._session(ws, deadline):
                    return
                reason = "refused"
            except (OSError, TimeoutError, WebSocketException) as exc:
                reason = type(exc).__name__
            finally:
                await ws.close()
            await self._next_web(reason)
        for ask in self.asks:
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
            raise NotGreeted(str(ready.get("code", ready.get("type"))))
        self.conversation_id = ready["conversation_id"]
        return ws

    async def _session(self, ws: ClientConnection, deadline: float) -> bool:
        """Ask and follow on one socket: True once every ask's turn ended, False when refused."""
        self.asking = False  # an ask sent on a dead socket is sent again on this one
        while time.monotonic() < deadline:
            unacknowledged = next((a for a in self.asks if a.ack_ms is None), None)
            if unacknowledged is not None and not self.asking:
                await self._send(ws, unacknowledged)
            elif unacknowledged is None and all(a.outcome for a in self.asks):
                return True
            frame = await self._recv(ws)
            if not await self._take(frame):
                return False
        return False

    async def _take(self, frame: dict[str, Any]) -> bool:
        kind = frame.get("type")
        if kind == "accepted":
            ask = next((a for a in self.asks if a.client_message_id == frame.get("client_message_id")), None)
            if ask is not None and ask.ack_ms is None:
                ask.acked_at = time.monotonic()
                ask.ack_ms = (ask.acked_at - ask.sent_at) * 1000
                self.asking = False
                await asyncio.sleep(ASK_PAUSE_S)
        elif kind == "error":
            code = str(frame.get("code"))
            self.refusals[code] = self.refusals.get(code, 0) + 1
            return False  # an ask refused (`unavailable`) is sent again on the next socket
        elif kind in {"event", "delta"}:
            self.last_event_id = frame["id"]
            if kind == "event":
                self._event(frame["event"])
        return True

    def _event(self, event: dict[str, Any]) -> None:
        if event["type"] == "user_message":
            for ask in self.asks:
                if ask.client_message_id == event.get("client_message_id"):
                    ask.turn = int(event["turn"])
        elif event["type"] in TERMINAL_TYPES:
            for ask in self.asks:
                if ask.turn and ask.turn == int(event.get("turn", 0)):
                    ask.outcome = event["type"]

    async def _send(self, ws: ClientConnection, ask: Ask) -> None:
        if not ask.sends:
            ask.sent_at = time.monotonic()
        self.asking = True
        ask.sends += 1
        ask.last_sent_at, ask.last_url = time.monotonic(), self.urls[self._web]
        frame = {"type": "ask", "text": ask.text, "mode": ask.mode}
        await ws.send(json.dumps({**frame, "client_message_id": ask.client_message_id}))

    @staticmethod
    async def _recv(ws: ClientConnection) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT_S))  # type: ignore[no-any-return]

    async def _next_web(self, reason: str) -> None:
        self._web = (self._web + 1) % len(self.urls)
        self.reconnects[reason] = self.reconnects.get(reason, 0) + 1
        await asyncio.sleep(RECONNECT_PAUSE_S)
