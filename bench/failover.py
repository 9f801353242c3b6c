"""How long a primary's SIGKILL stalls the asks to its slots: the cluster's own failover against the one its
supervisor forces on seeing the process exit (`EmbeddedCluster.fail_over`), interleaved.

    .venv/bin/python -m bench.failover [--pairs 4] [--node-timeout-ms 2000]

Each run starts a 3 + 3 Redis Cluster (store.cluster, with a password), then two dispatchers (the web
process's `RedisDispatcher`, one without WAIT, one with WAIT 1) submit an ask to one conversation every 50 ms
while that conversation's primary is SIGKILLed; the killed node is started again as soon as its replica is a
primary (as `docent run --cluster`'s supervisor does). Per mode it prints the median and the max over the
runs of: the promotion, the first ask taken without WAIT and with WAIT 1, the cluster settled again (the old
primary a replica), each in seconds after the kill, and the longest single submit during the outage.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from server.dispatch import RedisDispatcher
from store.cluster import EmbeddedCluster
from store.events import UserMessage
from store.exceptions import Unavailable
from store.redis import CLUSTER_NODE_TIMEOUT_MS, EmbeddedRedis, async_client

ASK_EVERY_S = 0.05
POLL_S = 0.02
SETTLE_TIMEOUT_S = 30.0
CONVERSATION = "failover-bench"
KEYS = ("promoted", "first ask, no WAIT", "first ask, WAIT 1", "settled", "longest submit")


async def _no_wake(conversation_id: str) -> None:
    return None


@dataclass
class Asker:
    """Asks every ASK_EVERY_S until `stop`; of the asks sent after `since`: when the first was taken, and the
    longest submit."""

    dispatcher: RedisDispatcher
    name: str
    since: float = 0.0
    first_ok_s: float | None = None
    longest_s: float = 0.0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            started = time.monotonic()
            after_kill = bool(self.since) and started >= self.since
            try:
                await self.dispatcher.submit(CONVERSATION, UserMessage(text="q"), dedup_id=f"{self.name}{n}")
                if self.first_ok_s is None and after_kill:
                    self.first_ok_s = time.monotonic() - self.since
            except Unavailable:
                pass
            if after_kill:
                self.longest_s = max(self.longest_s, time.monotonic() - started)
            await asyncio.sleep(ASK_EVERY_S)


def _role(cluster: EmbeddedCluster, node: EmbeddedRedis) -> str:
    try:
        with cluster.node_client(node) as client:
            return str(client.info("replication").get("role"))
    except Exception:  # a node that does not answer has no role yet
        return ""


async def one_run(scratch: Path, forced: bool, node_timeout_ms: int) -> dict[str, float]:
    with EmbeddedCluster(scratch, password="bench", node_timeout_ms=node_timeout_ms) as cluster:
        client = async_client(cluster.url, max_connections=64)
        plain = Asker(RedisDispatcher(client, _no_wake), "p")
        waiting = Asker(RedisDispatcher(client, _no_wake, replicas=1, wait_timeout_ms=500), "w")
        tasks = [asyncio.create_task(a.run()) for a in (plain, waiting)]
        await asyncio.sleep(0.5)
        primary = cluster.primary_of(f"conv:{{{CONVERSATION}}}:inbox")
        replica = next(n for n in cluster.running() if n is not primary and _replicates(cluster, n, primary))
        assert primary.process is not None
        os.kill(primary.process.pid, signal.SIGKILL)
        primary.process.wait()
        killed = plain.since = waiting.since = time.monotonic()
        if forced:
            cluster.fail_over(primary)
        while await asyncio.to_thread(_role, cluster, replica) != "master":
            await asyncio.sleep(POLL_S)
        promoted = time.monotonic() - killed
        await asyncio.to_thread(primary.start)
        await asyncio.to_thread(cluster.wait_ok, SETTLE_TIMEOUT_S)
        settled = time.monotonic() - killed
        while plain.first_ok_s is None or waiting.first_ok_s is None:
            await asyncio.sleep(POLL_S)
        for asker in (plain, waiting):
            asker.stop.set()
        await asyncio.gather(*tasks)
        await waiting.dispatcher.aclose()
        await client.aclose()
    longest = max(plain.longest_s, waiting.longest_s)
    return dict(zip(KEYS, (promoted, plain.first_ok_s, waiting.first_ok_s, settled, longest), strict=True))


def _replicates(cluster: EmbeddedCluster, node: EmbeddedRedis, primary: EmbeddedRedis) -> bool:
    with cluster.node_client(node) as client:
        return int(client.info("replication").get("master_port", 0)) == primary.port


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--node-timeout-ms", type=int, default=CLUSTER_NODE_TIMEOUT_MS)
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, float]]] = {"the cluster's failover": [], "forced by the supervisor": []}
    with tempfile.TemporaryDirectory() as scratch:
        for n in range(args.pairs):
            for mode, forced in (("the cluster's failover", False), ("forced by the supervisor", True)):
                run = asyncio.run(one_run(Path(scratch) / f"{n}-{forced}", forced, args.node_timeout_ms))
                runs[mode].append(run)
                print(mode, {k: round(v, 2) for k, v in run.items()}, flush=True)
    print(f"\n| seconds after the SIGKILL (median / max of {args.pairs}) | " + " | ".join(KEYS) + " |")
    print("| --- |" + " --- |" * len(KEYS))
    for mode, results in runs.items():
        cells = [
            f"{statistics.median(r[k] for r in results):.2f} / {max(r[k] for r in results):.2f}"
            for k in KEYS
        ]
        print(f"| {mode} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
