"""A socket's bounded buffer, filled by a shared reader and drained by the socket's send loop.

A subscriber that falls more than `capacity` items behind is marked overflowed and its backlog dropped:
the socket is told to resume from what it last sent, so one slow client never holds memory or stalls
the reader that serves everyone else.

One consumer (the socket's send loop) waits on it. Items are a list and the wake-up a future made only
while the consumer waits: an empty `deque`, and an `asyncio.Event` (which holds one), keep a 64-slot
block each per socket (tracemalloc in bench/ws.py's web process at 2,234 sockets: 0.37 KB a socket for
this buffer's deque alone).
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class BoundedBuffer(Generic[T]):
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.overflowed = False
        self.closed = False
        self._items: list[T] = []
        self._waiter: asyncio.Future[None] | None = None  # while the consumer waits in next_batch

    def push(self, item: T) -> None:
        if self.overflowed or self.closed:
            return
        if len(self._items) >= self.capacity:
            self.overflowed = True
            self._items = []  # the socket resumes from what it sent: the backlog is useless now
        else:
            self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next_batch(self) -> list[T]:
        """Items pushed since the last call (waits for at least one); [] once overflowed."""
        while not self._items and not self.overflowed:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        batch, self._items = self._items, []
        return batch

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._on_close()

    def _on_close(self) -> None:
        """Detach from whatever fills this buffer."""
