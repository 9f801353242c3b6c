"""A socket's bounded buffer, filled by a shared reader and drained by the socket's send loop.

A subscriber that falls more than `capacity` items behind is marked overflowed and its backlog dropped:
the socket is told to resume from what it last sent, so one slow client never holds memory or stalls
the reader that serves everyone else.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class BoundedBuffer(Generic[T]):
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.overflowed = False
        self.closed = False
        self._items: deque[T] = deque()
        self._ready = asyncio.Event()

    def push(self, item: T) -> None:
        if self.overflowed or self.closed:
            return
        if len(self._items) >= self.capacity:
            self.overflowed = True
            self._items.clear()  # the socket resumes from what it sent: the backlog is useless now
        else:
            self._items.append(item)
        self._ready.set()

    async def next_batch(self) -> list[T]:
        """Items pushed since the last call (waits for at least one); [] once overflowed."""
        while not self._items and not self.overflowed:
            self._ready.clear()
            await self._ready.wait()
        batch = list(self._items)
        self._items.clear()
        return batch

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._on_close()

    def _on_close(self) -> None:
        """Detach from whatever fills this buffer."""
