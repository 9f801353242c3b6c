"""A socket's bounded buffer, filled by a shared reader and drained by the socket's send loop.

A subscriber that falls more than `capacity` items behind is marked overflowed and its backlog dropped:
the socket is told to resume from what it last sent, so one slow client never holds memory or stalls
the reader that serves everyone else.

One consumer (the socket's send loop) waits on it. Items are a list and the wake-up a future made only
while the consumer waits: an empty `deque`, and an `asyncio.Event` (which holds one), keep a 64-slot
block each per socket (tracemalloc in bench/ws.py's web process at 2,234 sockets: 0.37 KB a socket for
this buffer's deque alone).

A consumer may also attach a `sink`: a synchronous writer the reader calls with each read's items while
nothing is queued or being sent by the consumer, so the common case costs no task wake-up. The sink takes
a prefix of the items (how many it wrote, in order); the rest are queued for the consumer as before, and
everything after them is queued too until the consumer has sent them: the order never changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

Sink = Callable[[list[T]], int]  # writes a prefix of the items now; how many


class BoundedBuffer(Generic[T]):
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.overflowed = False
        self.closed = False
        self.sink: Sink[T] | None = None
        self._items: list[T] = []
        self._sending = False  # the consumer holds a batch it has not finished sending
        self._waiter: asyncio.Future[None] | None = None  # while the consumer waits in next_batch

    def push(self, item: T) -> None:
        self.offer([item])

    def offer(self, items: list[T]) -> None:
        """One read's items, in order: to the sink while it may take them, else queued (bounded)."""
        if self.overflowed or self.closed or not items:
            return
        if self.sink is not None and not self._items and not self._sending:
            taken = self._sunk(self.sink, items)
            if taken >= len(items):
                return
            items = items[taken:]
        if len(self._items) + len(items) > self.capacity:
            self.overflowed = True
            self._items = []  # the socket resumes from what it sent: the backlog is useless now
        else:
            self._items += items
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @staticmethod
    def _sunk(sink: Sink[T], items: list[T]) -> int:
        """What the sink took; none when it failed (the consumer's own send then meets the failure,
        in the socket's task: the reader serving every other socket goes on)."""
        try:
            return sink(items)
        except Exception:
            log.exception("a socket's direct write failed; its send loop takes over")
            return 0

    async def next_batch(self) -> list[T]:
        """Items queued since the last call (waits for at least one); [] once overflowed. Calling it
        again says the previous batch is sent: the sink may take new items while none are queued."""
        self._sending = False
        while not self._items and not self.overflowed:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        batch, self._items = self._items, []
        self._sending = bool(batch)
        return batch

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sink = None
            self._on_close()

    def _on_close(self) -> None:
        """Detach from whatever fills this buffer."""
