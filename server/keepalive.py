"""One keepalive timer for every WebSocket of the web process, instead of a ping timer and a pong timer each.

uvicorn's sans-I/O protocol pings each socket every `ws_ping_interval` on its own `call_later` handle and
arms another for the pong (`ws_ping_timeout`); each ping packs a random payload and builds its frame. At
10,000 sockets that was ~6% of the web process's CPU (py-spy during bench/ws.py), with 20,000 handles in
the loop's timer heap. Here the sockets are spread over buckets, one bucket visited a tick, so each socket
is visited once every `period_s`. At a visit:

- a socket that sent anything since its last visit (a pong, its own ping, a message) is alive: nothing
  is sent (clients that ping us, as the `websockets` client does every 20 s, are never pinged);
- one that sent nothing is pinged, with one frame whose bytes are the same for every socket (PING_FRAME);
- one that sent nothing since it was pinged at the previous visit is failed (close 1011, as uvicorn does).

A dead peer is so failed at most three periods after the last frame it sent (the visit after it sees that
frame, the next pings, the next fails). `period_for` makes that uvicorn's bound, interval + timeout (40 s
here); a silent live peer is pinged every two periods instead of every interval.
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from typing import Protocol

PING_FRAME = b"\x89\x00"  # final, unmasked ping, empty payload: the pong is matched by arriving at all
KEEPALIVE_TICK_S = 0.1  # one bucket visited per tick: a period's sockets in period / tick slices
VISITS_TO_FAIL = 3  # a peer silent since its last frame: seen, pinged, failed


class Member(Protocol):
    heard: bool  # a frame came in since the last visit (set by the protocol's data_received)
    pinged: bool  # pinged at the last visit, nothing heard since

    def send_ping_frame(self) -> bool:
        """PING_FRAME written; False when the socket is no longer open (nothing to keep alive)."""
        ...

    def keepalive_timeout(self) -> None:
        """Fail the connection: the peer did not answer."""
        ...


def period_for(interval_s: float, timeout_s: float | None) -> float:
    """The visit period that fails a dead peer within interval + timeout of its last frame."""
    return (interval_s + (timeout_s if timeout_s is not None else interval_s)) / VISITS_TO_FAIL


class Keepalive:
    """The buckets of one event loop's sockets and the one timer that visits them."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, period_s: float, tick_s: float = KEEPALIVE_TICK_S
    ) -> None:
        self.loop = loop
        self.period_s = period_s
        count = max(1, round(period_s / tick_s))
        self.tick_s = period_s / count
        self.buckets: list[set[Member]] = [set() for _ in range(count)]
        self.members: dict[Member, set[Member]] = {}  # each socket's bucket
        self._placement = itertools.count()
        self._cursor = 0
        self._timer: asyncio.TimerHandle | None = None
        self._next_at = 0.0

    def add(self, member: Member) -> None:
        member.heard, member.pinged = True, False  # its handshake just came in
        bucket = self.buckets[next(self._placement) % len(self.buckets)]
        bucket.add(member)
        self.members[member] = bucket
        if self._timer is None:
            self._next_at = self.loop.time() + self.tick_s
            self._timer = self.loop.call_at(self._next_at, self._tick)

    def remove(self, member: Member) -> None:
        bucket = self.members.pop(member, None)
        if bucket is not None:
            bucket.discard(member)
        if not self.members and self._timer is not None:
            self._timer.cancel()  # an idle loop keeps no timer
            self._timer = None

    def _tick(self) -> None:
        bucket = self.buckets[self._cursor]
        self._cursor = (self._cursor + 1) % len(self.buckets)
        for member in list(bucket):  # a failed socket leaves later (connection_lost), never during the visit
            visit(member)
        self._next_at = max(self._next_at + self.tick_s, self.loop.time())  # no drift, no catch-up burst
        self._timer = self.loop.call_at(self._next_at, self._tick) if self.members else None


def visit(member: Member) -> None:
    if member.heard:
        member.heard = member.pinged = False
    elif member.pinged:
        member.pinged = False
        member.keepalive_timeout()
    else:
        member.pinged = member.send_ping_frame()


_BY_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, Keepalive]] = (
    weakref.WeakKeyDictionary()
)


def keepalive_for(loop: asyncio.AbstractEventLoop, period_s: float) -> Keepalive:
    """The loop's keepalive for sockets visited every `period_s` (one per distinct period)."""
    by_period = _BY_LOOP.setdefault(loop, {})
    keepalive = by_period.get(period_s)
    if keepalive is None:
        keepalive = by_period[period_s] = Keepalive(loop, period_s)
    return keepalive
