"""The one way blocking work (CTranslate2, USearch, Whoosh, SQLite) leaves the event loop (`run_blocking`),
or stays on a loop that runs one job on a thread of its own (`run_short` under `one_job_loop`)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
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


# A loop that runs one job on a thread of its own (a dramatiq worker thread's activation: the thread only
# waits for the loop) gains nothing from handing a short call to the pool: the caller waits for it anyway,
# and the hand-off adds two thread wake-ups, each waiting for the GIL behind the process's other threads.
_one_job_loop: ContextVar[bool] = ContextVar("docent_one_job_loop", default=False)


@contextmanager
def one_job_loop() -> Iterator[None]:
    """Within: `run_short` runs its call in the calling thread (for the tasks the loop starts inside)."""
    token = _one_job_loop.set(True)
    try:
        yield
    finally:
        _one_job_loop.reset(token)


async def run_short(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`run_blocking` for a short call its caller only waits for (a search, a catalog read): right here
    under `one_job_loop`, else on the pool. Never for work something else in the loop must run beside
    (a local model's generation streams its tokens to the loop while it runs)."""
    if _one_job_loop.get():
        return fn(*args, **kwargs)
    return await run_blocking(fn, *args, **kwargs)
