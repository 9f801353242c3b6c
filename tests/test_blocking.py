"""store.blocking: `run_short` hands its call to the pool, except in a loop that runs one job on a thread of
its own (`one_job_loop`, an activation on a dramatiq worker thread), where it runs right there."""

from __future__ import annotations

import asyncio
import threading

from store.blocking import one_job_loop, run_short


async def _where() -> int:
    return await run_short(threading.get_ident)


def test_a_short_call_runs_on_the_pool_by_default() -> None:
    assert asyncio.run(_where()) != threading.get_ident()


def test_a_short_call_runs_in_the_loop_s_own_thread_under_one_job_loop() -> None:
    loop = asyncio.new_event_loop()
    try:
        with one_job_loop():
            assert loop.run_until_complete(_where()) == threading.get_ident()
    finally:
        loop.close()
    assert asyncio.run(_where()) != threading.get_ident()  # and only within
