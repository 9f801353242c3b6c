"""WebSocket fan-out bench: many authenticated sockets on one web process.

    .venv/bin/python -m bench.ws [--connections 1000 5000] [--rate 2000] [--seconds 10] [--client-processes K]
        [--gc-thresholds gen0,gen1,gen2]

Starts an embedded Redis (or uses REDIS_URL) and one real web process (uvicorn, as in production), opens
N sockets, each greeted into its own conversation (the worst case for the shared reader: N live keys),
then plays the workers: XADDs token deltas at `rate` per second spread over all conversations, each
stamped with its send time. Prints the web process's RSS per connection, its open fds against its fd
limit (so the most sockets it could hold: every fd that is not a socket stays), fan-out latency (XADD to
the client's receive) p50/p95/p99, the web process's CPU use (and, measured over IDLE_WINDOW_S with every
socket open before any event, its idle share: what is left is the events' own cost), whether every
event arrived once and in order, and the web process's garbage collections in the event window (its
DOCENT_WEB_GC_LOG_PATH: per generation, how many, their CPU and wall time, the longest pause).
The client runs on the same machine and its CPU shows up in the latency: read the figures as upper bounds.
The sockets are spread over K client processes (default: one per SOCKETS_PER_CLIENT_PROCESS sockets), so one
client's event loop is not the bottleneck; the fd limit is raised (hard limit too, when allowed) for the
bench and the web process it starts, and the web process's per-tenant socket cap is raised to the count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import itertools
import json
import math
import multiprocessing
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import redis.asyncio as aredis
from websockets.asyncio.client import ClientConnection, connect

from server.auth import mint_token
from server.collector import Collection, read_log
from store.events import Delta, encode
from store.redis import EmbeddedRedis
from tests.server_proc import ServerProcess, server_env

CONNECT_CONCURRENCY = 100  # hellos in flight, all client processes together
HELLO_RETRIES = 5
HELLO_RETRY_S = 1.0
REFUSED_HELLOS: list[str] = []  # this process's hellos refused (and retried)
PRODUCER_TICK_S = 0.01
DRAIN_WAIT_S = 3.0
LIVE_MAXLEN = 2000
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
SOCKETS_PER_CLIENT_PROCESS = 5000
CLIENT_START_TIMEOUT_S = 600.0
LAG_TICK_S = 0.005  # the client's event-loop lag probe: a sleep this long, and how late it wakes
IDLE_WINDOW_S = 5.0  # the web process's CPU with every socket open and no event: keepalive, client pings


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft fd limit to `wanted` (and the hard one, when allowed: root); the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):  # raising the hard limit needs CAP_SYS_RESOURCE
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    target = min(hard, max(soft, wanted)) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_limit(pid: int) -> int:
    """The process's soft limit on open files (what EMFILE is raised at)."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise RuntimeError("no open-files limit")


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


def out_of_order(ids: list[str]) -> int:
    """How many of one socket's event ids are not above the one before (each must come once, in order)."""
    keys = [tuple(map(int, i.split("-"))) for i in ids]
    return sum(1 for before, after in itertools.pairwise(keys) if after <= before)


class Refused(Exception):
    """A hello answered with an error frame (e.g. `unavailable` while the web process is saturated)."""


async def open_client(url: str, token: str) -> Client:
    ws = await connect(url, open_timeout=60, max_size=2**20, compression=None)
    await ws.send(json.dumps({"type": "hello", "token": token}))
    ready = json.loads(await ws.recv())
    if ready["type"] != "ready":
        await ws.close()
        raise Refused(str(ready.get("code")))
    return Client(ws, ready["conversation_id"])


async def open_clients(url: str, tokens: list[str], concurrency: int = CONNECT_CONCURRENCY) -> list[Client]:
    """A socket per token, `concurrency` hellos at a time; a refused hello is retried (as docent.js does)
    after HELLO_RETRY_S, at most HELLO_RETRIES times."""
    gate = asyncio.Semaphore(concurrency)

    async def one(token: str) -> Client:
        for _ in range(HELLO_RETRIES):
            async with gate:
                try:
                    return await open_client(url, token)
                except Refused:
                    REFUSED_HELLOS.append(token)
            await asyncio.sleep(HELLO_RETRY_S)
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


async def probe_lag(lags_ms: list[float]) -> None:
    """How late this client's event loop runs a LAG_TICK_S sleep, in ms, until cancelled: the part of the
    fan-out latency the bench client itself adds (its own work and its wait for a core)."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(LAG_TICK_S)
        lags_ms.append((loop.time() - started - LAG_TICK_S) * 1000)


def client_process(url: str, tokens: list[str], concurrency: int, pipe: Connection) -> None:
    """One client process: open a socket per token, read deltas until told to stop, send the figures."""
    asyncio.run(_client_process(url, tokens, concurrency, pipe))


async def _client_process(url: str, tokens: list[str], concurrency: int, pipe: Connection) -> None:
    clients = await open_clients(url, tokens, concurrency)
    # Its own garbage collections would show up as fan-out latency: long-lived objects frozen out.
    gc.collect()
    gc.freeze()
    readers = [asyncio.create_task(c.read()) for c in clients]
    pipe.send([c.conversation_id for c in clients])
    await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # "start": the producer begins
    lags_ms: list[float] = []
    readers.append(asyncio.create_task(probe_lag(lags_ms)))
    await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # "stop"
    latencies = [ms for c in clients for ms in c.latencies_ms]
    received = sum(len(c.ids) for c in clients)
    duplicates = sum(len(c.ids) - len(set(c.ids)) for c in clients)
    disordered = sum(out_of_order(c.ids) for c in clients)
    pipe.send((latencies, received, duplicates, len(REFUSED_HELLOS), lags_ms, disordered))
    await asyncio.gather(*(c.ws.close() for c in clients), return_exceptions=True)
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)


@dataclasses.dataclass
class ClientResults:
    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    received: int = 0
    duplicates: int = 0
    refused: int = 0
    lags_ms: list[float] = dataclasses.field(default_factory=list)  # the clients' event-loop lag samples
    out_of_order: int = 0


class ClientProcesses:
    """`count` client processes sharing the tokens; their conversations once every socket is greeted."""

    def __init__(self, url: str, tokens: list[str], count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes: list[Any] = []
        for n in range(count):
            ours, theirs = context.Pipe()
            share = tokens[n::count]
            concurrency = max(1, CONNECT_CONCURRENCY // count)
            arguments = (url, share, concurrency, theirs)
            process = context.Process(target=client_process, args=arguments, daemon=True)
            process.start()
            self.pipes.append(ours)
            self.processes.append(process)

    def conversations(self) -> list[str]:
        found: list[str] = []
        for pipe in self.pipes:
            if not pipe.poll(CLIENT_START_TIMEOUT_S):
                raise RuntimeError("a client process did not open its sockets in time")
            found += pipe.recv()
        return found

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.processes)

    def start(self) -> None:
        for pipe in self.pipes:
            pipe.send("start")

    def results(self) -> ClientResults:
        out = ClientResults()
        for pipe in self.pipes:
            pipe.send("stop")
        for pipe in self.pipes:
            got, n, dup, no, lags, disordered = pipe.recv()
            out.latencies_ms += got
            out.received += n
            out.duplicates += dup
            out.refused += no
            out.lags_ms += lags
            out.out_of_order += disordered
        for process in self.processes:
            process.join(timeout=30)
        return out


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


def gc_figures(collections: list[Collection], start_s: float, end_s: float) -> dict[str, float]:
    """The web process's collections that ended in [start_s, end_s] (the event window): per generation,
    how many, their CPU and wall time in all, the longest pause; and every collection's CPU before it."""
    window = [c for c in collections if start_s <= c.at_s <= end_s]
    before = [c for c in collections if c.at_s < start_s]  # start-up and the sockets' connects
    figures: dict[str, float] = {
        "gc_cpu_ms_before": sum(c.cpu_ms for c in before),
        "gc_max_wall_ms_before": max((c.wall_ms for c in before), default=0.0),
        **{f"gc{g}_count_before": sum(c.generation == g for c in before) for g in range(3)},
    }
    for generation in range(3):
        ours = [c for c in window if c.generation == generation]
        figures[f"gc{generation}_count"] = len(ours)
        figures[f"gc{generation}_cpu_ms"] = sum(c.cpu_ms for c in ours)
        figures[f"gc{generation}_wall_ms"] = sum(c.wall_ms for c in ours)
        figures[f"gc{generation}_max_wall_ms"] = max((c.wall_ms for c in ours), default=0.0)
    return figures


async def run_one(
    web: ServerProcess, redis_pid: int | None, redis_url: str, connections: int, rate: float, seconds: float,
    client_processes: int, gc_log: Path,
) -> dict[str, float]:  # fmt: skip
    assert web.process is not None
    pid = web.process.pid
    tokens = [mint_token(web.settings, "bench", f"u{n}", ttl=3600) for n in range(connections)]
    warm = await open_client(web.ws_url, tokens[0])  # imports, pools and caches paid before measuring
    await warm.ws.close()
    await asyncio.sleep(0.5)
    rss_before = rss_bytes(pid)
    started = time.monotonic()
    clients = ClientProcesses(web.ws_url, tokens, client_processes)
    conversations = await asyncio.to_thread(clients.conversations)
    connect_s = time.monotonic() - started
    await asyncio.sleep(1.0)
    rss_after = rss_bytes(pid)
    fds = open_fds(pid)  # the sockets and the web process's own (Redis pools, listener, files)
    idle_start = cpu_seconds(pid)
    await asyncio.sleep(IDLE_WINDOW_S)
    idle = (cpu_seconds(pid) - idle_start) / IDLE_WINDOW_S
    producer = aredis.Redis.from_url(redis_url)
    cpu_start, wall_start = cpu_seconds(pid), time.monotonic()
    own_start = cpu_seconds(os.getpid()) + clients.cpu_seconds()
    redis_start = cpu_seconds(redis_pid) if redis_pid else 0.0
    window_start_s = time.time()
    clients.start()
    print(f"producing for {seconds:g} s from {time.time():.3f} (web pid {pid})", file=sys.stderr, flush=True)
    sent = await produce(producer, conversations, rate, seconds)
    await asyncio.sleep(DRAIN_WAIT_S)
    window_end_s = time.time()
    wall = time.monotonic() - wall_start
    cpu = (cpu_seconds(pid) - cpu_start) / wall
    own_cpu = (cpu_seconds(os.getpid()) + clients.cpu_seconds() - own_start) / wall
    redis_cpu = (cpu_seconds(redis_pid) - redis_start) / wall if redis_pid else float("nan")
    results = await asyncio.to_thread(clients.results)
    latencies = results.latencies_ms
    await producer.aclose()
    return {
        "connections": connections,
        "client_processes": client_processes,
        "connect_s": connect_s,
        "refused_hellos": results.refused,
        "rss_before_mb": rss_before / 2**20,
        "rss_after_mb": rss_after / 2**20,
        "kb_per_connection": (rss_after - rss_before) / connections / 1024,
        "web_fds": fds,
        "web_fd_limit": fd_limit(pid),
        "sent": sent,
        "received": results.received,
        "duplicates": results.duplicates,
        "out_of_order": results.out_of_order,
        "p50_ms": statistics.median(latencies) if latencies else float("nan"),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies, default=float("nan")),
        "client_lag_p50_ms": percentile(results.lags_ms, 50),
        "client_lag_p95_ms": percentile(results.lags_ms, 95),
        "client_lag_max_ms": max(results.lags_ms, default=float("nan")),
        "web_cpu_cores": cpu,
        "web_cpu_us_per_event": cpu * wall * 1e6 / max(results.received, 1),
        "web_idle_cores": idle,
        "web_cpu_us_per_event_above_idle": (cpu - idle) * wall * 1e6 / max(results.received, 1),
        "client_cpu_cores": own_cpu,
        "redis_cpu_cores": redis_cpu,
        "load_avg_1m": os.getloadavg()[0],
        **gc_figures(read_log(gc_log) if gc_log.exists() else [], window_start_s, window_end_s),
    }


def print_row(row: dict[str, float]) -> None:
    print(
        f"{int(row['connections']):>6} sockets ({int(row['client_processes'])} client processes)  "
        f"connect {row['connect_s']:5.1f} s ({int(row['refused_hellos'])} hellos refused, retried)  "
        f"RSS {row['rss_before_mb']:6.1f} -> {row['rss_after_mb']:6.1f} MB "
        f"({row['kb_per_connection']:5.1f} KB/socket)  "
        f"fds {int(row['web_fds'])} of {int(row['web_fd_limit'])} "
        f"(most sockets: {int(row['connections'] + row['web_fd_limit'] - row['web_fds'])})  "
        f"events {int(row['received'])}/{int(row['sent'])} (dup {int(row['duplicates'])}, "
        f"out of order {int(row['out_of_order'])})  "
        f"latency p50 {row['p50_ms']:6.1f} p95 {row['p95_ms']:6.1f} p99 {row['p99_ms']:6.1f} "
        f"max {row['max_ms']:6.1f} ms  CPU cores: web {row['web_cpu_cores']:.2f} "
        f"({row['web_cpu_us_per_event']:.0f} us an event; idle {row['web_idle_cores']:.3f}, "
        f"{row['web_cpu_us_per_event_above_idle']:.0f} us an event above it) "
        f"clients+producer {row['client_cpu_cores']:.2f} redis {row['redis_cpu_cores']:.2f}  "
        f"client loop lag p50 {row['client_lag_p50_ms']:.1f} p95 {row['client_lag_p95_ms']:.1f} "
        f"max {row['client_lag_max_ms']:.1f} ms  "
        f"(load avg {row['load_avg_1m']:.1f} on {os.cpu_count()} CPUs)",
        flush=True,
    )
    pauses = "; ".join(
        f"gen{g} {int(row[f'gc{g}_count'])} ({row[f'gc{g}_cpu_ms']:.0f} ms CPU, "
        f"{row[f'gc{g}_wall_ms']:.0f} ms wall, longest {row[f'gc{g}_max_wall_ms']:.0f} ms)"
        for g in range(3)
    )
    counts = "/".join(str(int(row[f"gc{g}_count_before"])) for g in range(3))
    before = (
        f"{counts} collections, {row['gc_cpu_ms_before']:.0f} ms CPU, "
        f"longest {row['gc_max_wall_ms_before']:.0f} ms"
    )
    print(f"  web GC in the event window: {pauses}; before it (gen0/1/2) {before}", flush=True)


async def main_async(args: argparse.Namespace) -> None:
    raise_fd_limit(max(args.connections) + 4096)  # inherited by the web process and the client processes
    with tempfile.TemporaryDirectory() as tmp:
        embedded = None if os.environ.get("REDIS_URL") else EmbeddedRedis(Path(tmp) / "redis").start()
        redis_url = os.environ.get("REDIS_URL") or (embedded.url if embedded else "")
        try:
            for connections in args.connections:
                gc_log = Path(tmp) / f"gc{connections}.jsonl"
                gc_settings = {"web_gc_thresholds": args.gc_thresholds} if args.gc_thresholds else {}
                env = server_env(
                    redis_url, Path(tmp) / f"web{connections}", ws_idle_timeout_s="3600",
                    ws_max_sockets_per_tenant=str(connections + 1), web_gc_log_path=str(gc_log),
                    **gc_settings,
                )  # fmt: skip
                processes = args.client_processes or math.ceil(connections / SOCKETS_PER_CLIENT_PROCESS)
                with ServerProcess(env) as web:
                    redis_pid = embedded.process.pid if embedded and embedded.process else None
                    row = await run_one(
                        web, redis_pid, redis_url, connections, args.rate, args.seconds, processes, gc_log
                    )
                    print_row(row)
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
    parser.add_argument(
        "--client-processes", type=int, default=0,
        help=f"client processes (default: one per {SOCKETS_PER_CLIENT_PROCESS} sockets)",
    )  # fmt: skip
    parser.add_argument(
        "--gc-thresholds", default="", help="the web process's DOCENT_WEB_GC_THRESHOLDS (default: its own)"
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
