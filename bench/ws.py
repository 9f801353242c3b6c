"""WebSocket fan-out bench: many authenticated sockets on one web process.

    .venv/bin/python -m bench.ws [--connections 1000 5000] [--rate 2000] [--seconds 10]

Starts an embedded Redis (or uses REDIS_URL) and one real web process (uvicorn, as in production), opens
N sockets, each greeted into its own conversation (the worst case for the shared reader: N live keys),
then plays the workers: XADDs token deltas at `rate` per second spread over all conversations, each
stamped with its send time. Prints the web process's RSS per connection, fan-out latency (XADD to the
client's receive) p50/p95/p99, the web process's CPU use, and whether every event arrived exactly once.
The client runs on the same machine and its CPU shows up in the latency: read the figures as upper bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path

import redis.asyncio as aredis
from websockets.asyncio.client import ClientConnection, connect

from server.auth import mint_token
from store.events import Delta, encode
from store.redis import EmbeddedRedis
from tests.server_proc import ServerProcess, server_env

CONNECT_CONCURRENCY = 100
PRODUCER_TICK_S = 0.01
DRAIN_WAIT_S = 3.0
LIVE_MAXLEN = 2000
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def raise_fd_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, max(soft, wanted)) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S  # utime + stime


class Client:
    def __init__(self, ws: ClientConnection, conversation_id: str) -> None:
        self.ws = ws
        self.conversation_id = conversation_id
        self.latencies_ms: list[float] = []
        self.ids: list[str] = []

    async def read(self) -> None:
        async for message in self.ws:
            frame = json.loads(message)
            if frame["type"] == "delta":
                self.latencies_ms.append((time.time_ns() - int(frame["text"])) / 1e6)
                self.ids.append(frame["id"])


async def open_client(url: str, token: str) -> Client:
    ws = await connect(url, open_timeout=60, max_size=2**20, compression=None)
    await ws.send(json.dumps({"type": "hello", "token": token}))
    ready = json.loads(await ws.recv())
    assert ready["type"] == "ready", ready
    return Client(ws, ready["conversation_id"])


async def open_clients(url: str, tokens: list[str]) -> list[Client]:
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(token: str) -> Client:
        async with gate:
            return await open_client(url, token)

    return list(await asyncio.gather(*(one(t) for t in tokens)))


async def produce(client: aredis.Redis, conversations: list[str], rate: float, seconds: float) -> int:
    keys = [f"conv:{{{c}}}:live" for c in conversations]
    sent, start = 0, time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate) - sent
        if due > 0:
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(due):
                    stamp = str(time.time_ns())
                    pipe.xadd(
                        random.choice(keys), {"e": encode(Delta(text=stamp, turn=1))}, maxlen=LIVE_MAXLEN
                    )
                await pipe.execute()
            sent += due
        await asyncio.sleep(PRODUCER_TICK_S)
    return sent


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


async def run_one(
    web: ServerProcess, redis_pid: int | None, redis_url: str, connections: int, rate: float, seconds: float
) -> dict[str, float]:
    assert web.process is not None
    pid = web.process.pid
    tokens = [mint_token(web.settings, "bench", f"u{n}", ttl=3600) for n in range(connections)]
    warm = await open_client(web.ws_url, tokens[0])  # imports, pools and caches paid before measuring
    await warm.ws.close()
    await asyncio.sleep(0.5)
    rss_before = rss_bytes(pid)
    started = time.monotonic()
    clients = await open_clients(web.ws_url, tokens)
    connect_s = time.monotonic() - started
    await asyncio.sleep(1.0)
    rss_after = rss_bytes(pid)
    # The client side's own garbage collections (5,000 client sockets in one process) would show up as
    # fan-out latency: its long-lived objects are frozen out of the collector while measuring.
    gc.collect()
    gc.freeze()
    readers = [asyncio.create_task(c.read()) for c in clients]
    producer = aredis.Redis.from_url(redis_url)
    cpu_start, wall_start = cpu_seconds(pid), time.monotonic()
    own_start = cpu_seconds(os.getpid())
    redis_start = cpu_seconds(redis_pid) if redis_pid else 0.0
    sent = await produce(producer, [c.conversation_id for c in clients], rate, seconds)
    await asyncio.sleep(DRAIN_WAIT_S)
    wall = time.monotonic() - wall_start
    cpu = (cpu_seconds(pid) - cpu_start) / wall
    own_cpu = (cpu_seconds(os.getpid()) - own_start) / wall
    redis_cpu = (cpu_seconds(redis_pid) - redis_start) / wall if redis_pid else float("nan")
    latencies = [ms for c in clients for ms in c.latencies_ms]
    received = sum(len(c.ids) for c in clients)
    duplicates = sum(len(c.ids) - len(set(c.ids)) for c in clients)
    await asyncio.gather(*(c.ws.close() for c in clients), return_exceptions=True)
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    await producer.aclose()
    gc.unfreeze()
    return {
        "connections": connections,
        "connect_s": connect_s,
        "rss_before_mb": rss_before / 2**20,
        "rss_after_mb": rss_after / 2**20,
        "kb_per_connection": (rss_after - rss_before) / connections / 1024,
        "sent": sent,
        "received": received,
        "duplicates": duplicates,
        "p50_ms": statistics.median(latencies) if latencies else float("nan"),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies, default=float("nan")),
        "web_cpu_cores": cpu,
        "client_cpu_cores": own_cpu,
        "redis_cpu_cores": redis_cpu,
        "load_avg_1m": os.getloadavg()[0],
    }


def print_row(row: dict[str, float]) -> None:
    print(
        f"{int(row['connections']):>6} sockets  connect {row['connect_s']:5.1f} s  "
        f"RSS {row['rss_before_mb']:6.1f} -> {row['rss_after_mb']:6.1f} MB "
        f"({row['kb_per_connection']:5.1f} KB/socket)  "
        f"events {int(row['received'])}/{int(row['sent'])} (dup {int(row['duplicates'])})  "
        f"latency p50 {row['p50_ms']:6.1f} p95 {row['p95_ms']:6.1f} p99 {row['p99_ms']:6.1f} "
        f"max {row['max_ms']:6.1f} ms  CPU cores: web {row['web_cpu_cores']:.2f} "
        f"clients+producer {row['client_cpu_cores']:.2f} redis {row['redis_cpu_cores']:.2f}  "
        f"(load avg {row['load_avg_1m']:.1f} on {os.cpu_count()} CPUs)",
        flush=True,
    )


async def main_async(args: argparse.Namespace) -> None:
    raise_fd_limit(max(args.connections) * 2 + 1024)  # inherited by the web process
    with tempfile.TemporaryDirectory() as tmp:
        embedded = None if os.environ.get("REDIS_URL") else EmbeddedRedis(Path(tmp) / "redis").start()
        redis_url = os.environ.get("REDIS_URL") or (embedded.url if embedded else "")
        try:
            for connections in args.connections:
                env = server_env(redis_url, Path(tmp) / f"web{connections}", ws_idle_timeout_s="3600")
                with ServerProcess(env) as web:
                    redis_pid = embedded.process.pid if embedded and embedded.process else None
                    print_row(await run_one(web, redis_pid, redis_url, connections, args.rate, args.seconds))
        finally:
            if embedded:
                embedded.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--rate", type=float, default=2000.0, help="events per second, all sockets together")
    parser.add_argument("--seconds", type=float, default=10.0)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
