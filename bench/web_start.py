"""A freshly started web process's first seconds: ask -> `accepted` and hello -> `ready`, by 2-second bucket
after it first answered `/healthz`, on a 3 + 3 Redis Cluster (queues on a single Redis).

    .venv/bin/python -m bench.web_start [--rounds 3] [--users 8] [--seconds 8]

Each round starts one web process (`python -m server.app`, as `docent chaos --topology cluster` restarts
them) and, as soon as it is healthy, U WebSocket users each say hello and ask three `qa` questions 100 ms
apart on one socket, again and again, for S seconds (no worker: an ask is `accepted` once its inbox entry
is written and its activation enqueued). Prints, per bucket, p50 / p95 / max of both, and the start ->
healthy time. Run it on two commits to compare them (README "Crash safety on the cluster").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

from actors.chaos import corpus
from actors.chaos.run import worker_env
from server.auth import mint_token
from server.chaos.stack import WebProcess
from store.cluster import EmbeddedCluster
from store.redis import EmbeddedRedis
from store.settings import Settings

BUCKET_S = 2
ASKS_PER_SOCKET = 3
ASK_PAUSE_S = 0.1
FRAME_TIMEOUT_S = 20.0
NO_LLM_URL = "http://127.0.0.1:9/v1"  # nothing answers there: no worker runs

Sample = tuple[float, str, float]  # (when it started, "ask" / "hello" / "error", seconds it took)


async def user(url: str, token: str, until: float, samples: list[Sample]) -> None:
    """Hello, ASKS_PER_SOCKET asks, close; again until `until`."""
    asked, conversation = 0, ""
    while time.monotonic() < until:
        started = time.monotonic()
        try:
            async with connect(url, open_timeout=FRAME_TIMEOUT_S, compression=None) as ws:
                hello = {
                    "type": "hello",
                    "token": token,
                    **({"conversation_id": conversation} if conversation else {}),
                }
                await ws.send(json.dumps(hello))
                ready = json.loads(await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT_S))
                samples.append((started, "hello", time.monotonic() - started))
                conversation = ready.get("conversation_id", conversation)
                for _ in range(ASKS_PER_SOCKET):
                    asked += 1
                    samples.append(await _ask(ws, f"q{asked}-{secrets.token_hex(4)}"))
                    await asyncio.sleep(ASK_PAUSE_S)
        except (OSError, TimeoutError, ValueError) as exc:
            samples.append((started, "error", 0.0))
            print(f"  {type(exc).__name__}: {exc}", file=sys.stderr)


async def _ask(ws: ClientConnection, client_message_id: str) -> Sample:
    started = time.monotonic()
    frame = {"type": "ask", "text": "What is the price in the Alpha contract?", "mode": "qa"}
    await ws.send(json.dumps({**frame, "client_message_id": client_message_id}))
    while True:
        reply = json.loads(await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT_S))
        if reply.get("type") in ("accepted", "error"):
            kind = "ask" if reply["type"] == "accepted" else "error"
            return started, kind, time.monotonic() - started


def summary(samples: list[Sample], healthy: float, seconds: float) -> list[str]:
    lines = []
    for low in range(0, int(seconds), BUCKET_S):
        for kind in ("ask", "hello"):
            ms = sorted(d * 1000 for t, k, d in samples if k == kind and low <= t - healthy < low + BUCKET_S)
            if ms:
                p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
                head = f"  {low:>2}-{low + BUCKET_S:<2} s  {kind:5} n={len(ms):3}"
                p50 = statistics.median(ms)
                lines.append(f"{head}  p50 {p50:7.1f}  p95 {p95:7.1f}  max {ms[-1]:7.1f} ms")
    errors = sum(1 for _, k, _ in samples if k == "error")
    return [*lines, f"  errors: {errors}"] if errors else lines


def run_round(
    root: Path, env: dict[str, str], settings: Settings, n: int, users: int, seconds: float
) -> None:
    web = WebProcess(env, root / f"web-{n}.log")
    web.start()
    web.wait_healthy(60.0)
    healthy = time.monotonic()
    tokens = [mint_token(settings, corpus.TENANT, f"start{n}-{u}", ttl=600) for u in range(users)]
    samples: list[Sample] = []

    async def drive() -> None:
        until = time.monotonic() + seconds
        await asyncio.gather(*(user(web.ws_url, token, until, samples) for token in tokens))

    try:
        asyncio.run(drive())
    finally:
        web.stop()
    print(f"round {n}: start -> healthy {healthy - web.started_at:.2f} s")
    print("\n".join(summary(samples, healthy, seconds)), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="docent-web-start-") as scratch:
        root = Path(scratch)
        corpus.build(root / "data")
        password = secrets.token_hex(16)
        with (
            EmbeddedCluster(root / "cluster", password=password) as cluster,
            EmbeddedRedis(root / "queues", password=password) as queues,
        ):
            env = worker_env(root, cluster.url, NO_LLM_URL, 9, broker_url=queues.url)
            env.update({
                "DOCENT_SECRET": secrets.token_hex(32), "DOCENT_ADMIN_API_KEY": secrets.token_hex(16),
                "DOCENT_USER_RATE_PER_S": "1000", "DOCENT_USER_BURST": "1000",
            })  # fmt: skip
            settings = Settings.from_env(env)
            for n in range(args.rounds):
                run_round(root, env, settings, n, args.users, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
