"""An answer's streamed text, paced: at most one delta every `interval_ms` (the first at once).

    pacer = DeltaPacer(send, interval_ms=20)     # send: async (text) -> None, e.g. the activation's delta
    await pacer.feed(text)                       # per network read of the model's stream
    await pacer.close()                          # before a failure is recorded: the rest, sent
    text = await pacer.rest()                    # or the rest, handed back to go out with the completion

A fast model (or a busy worker reading a backlog) hands over many small reads a few milliseconds apart;
each delta is a fenced append and a frame to every socket following the conversation. Text that arrives
less than `interval_ms` after the last delta is held and joins the next one: the next read past the
interval, or a timer at the interval when the stream goes quiet meanwhile, or `close`. A model slower
than one token per interval still gets one delta per read, and nothing held waits longer than the
interval (plus the loop's own latency). Deltas go out in order, one at a time; an error from `send` in a
timer's delta (a lost lease) is raised by the next `feed` or by `close`. `interval_ms` 0: every read is
sent as it comes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Send = Callable[[str], Awaitable[None]]


class DeltaPacer:
    def __init__(self, send: Send, interval_ms: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.send = send
        self.interval_s = interval_ms / 1000
        self.clock = clock
        self._held: list[str] = []
        self._sent_at: float | None = None
        self._timer: asyncio.TimerHandle | None = None  # set while text is held: most turns end before it
        self._late: asyncio.Task[None] | None = None  # the timer's delta, once it fired
        self._lock = asyncio.Lock()
        self._failed: BaseException | None = None

    async def feed(self, text: str) -> None:
        self._raise_failure()
        self._held.append(text)
        if self._timer is not None:
            return  # the timer sends it with whatever else arrives meanwhile
        wait_s = 0.0 if self._sent_at is None else self._sent_at + self.interval_s - self.clock()
        if wait_s <= 0:
            await self._flush()
        else:
            self._timer = asyncio.get_running_loop().call_later(wait_s, self._fire)

    async def close(self) -> None:
        """Send what is held (after the timer's delta, if one is going out now)."""
        await self._settle()
        await self._flush()

    async def rest(self) -> str:
        """`close`, but the held text is returned instead of sent: the caller appends it with the model's
        completion, one append instead of two (after the timer's delta, if one is going out now)."""
        await self._settle()
        async with self._lock:
            text = "".join(self._held)
            self._held.clear()
            return text

    async def _settle(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._late is not None:
            await self._late
            self._late = None
        self._raise_failure()

    def _fire(self) -> None:
        self._timer = None
        self._late = asyncio.get_running_loop().create_task(self._flush_late())

    async def _flush_late(self) -> None:
        try:
            await self._flush()
        except Exception as exc:  # handed to the caller's next feed or close
            self._failed = exc

    async def _flush(self) -> None:
        async with self._lock:  # one delta at a time, in order
            if not self._held:
                return
            text = "".join(self._held)
            self._held.clear()
            self._sent_at = self.clock()
            await self.send(text)

    def _raise_failure(self) -> None:
        failed, self._failed = self._failed, None
        if failed is not None:
            raise failed
