"""The one way blocking work (CTranslate2, USearch, Whoosh, SQLite) leaves the event loop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_executor: ThreadPoolExecutor | None = None


def executor() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        workers = int(os.environ.get("DOCENT_BLOCKING_THREADS", "0")) or min(8, (os.cpu_count() or 2) + 2)
        _executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="docent-blocking")
    return _executor


async def run_blocking(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run `fn` on the shared blocking pool and await its result."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor(), partial(fn, *args, **kwargs))
