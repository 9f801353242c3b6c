"""An event loop in a daemon thread, so synchronous tests and tools can host the async doubles."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")
CALL_TIMEOUT_S = 10.0


class LoopThread:
    """`start()` runs a loop in a daemon thread; `call(fn)` runs `fn()` on it; `stop()` ends it."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def call(self, fn: Callable[[], T]) -> T:
        """`fn()` on the loop's thread (state the loop owns is read there); its result."""

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(CALL_TIMEOUT_S)

    def run(self, factory: Callable[[], Awaitable[Any]]) -> Any:
        """Await `factory()` on the loop; its result (or its exception, raised here)."""

        async def run() -> Any:
            return await factory()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(CALL_TIMEOUT_S)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CALL_TIMEOUT_S)
        if not self._loop.is_closed():
            self._loop.close()
