"""Conversation log bench: fenced append rate, and replay time in full vs from a snapshot.

    .venv/bin/python -m bench.log [--appends 5000] [--runs 21] [--fsync always|everysec]

Uses REDIS_URL when set, else starts an embedded redis-server (append-only, `appendfsync` from --fsync,
default DOCENT_REDIS_FSYNC, i.e. everysec as `docent run` does) in a temporary directory. Events are a
realistic mix (an agent turn of ten events, about 1 KB each on average, prompts included); the snapshot is
an opaque 32 KB state blob.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from store.events import (
    AnswerCompleted,
    Citation,
    Delta,
    Event,
    LLMCompleted,
    LLMRequested,
    RetrievalDone,
    ToolCall,
    ToolIntent,
    ToolResult,
    TurnStarted,
    UserMessage,
    encode,
)
from store.log import ConversationLog, Lease
from store.redis import EmbeddedRedis
from store.settings import Settings

SETUP_BATCH = 200
SNAPSHOT_STATE_BYTES = 32 * 1024
SNAPSHOT_EVERY_EVENTS = 200  # Settings.snapshot_every_events: the tail is at most this long
LEASE_MS = 600_000


def agent_turn(turn: int) -> list[Event]:
    question = f"Compare the termination clauses of contracts {turn}a, {turn}b and {turn}c. " * 3
    prompt = [{"role": "system", "content": "You answer from the context. " + "context " * 250}]
    answer = "The three contracts differ in notice period and cure rights [1][2][3]. " * 8
    call = ToolCall(id=f"call-{turn}", name="make_table", arguments='{"rows": 3, "columns": ["notice"]}')
    return [
        UserMessage(text=question, user="alice", tenant="acme", client_message_id=f"m{turn}", turn=turn),
        TurnStarted(route="agent", reason="comparison across documents", turn=turn),
        RetrievalDone(query=question, chunk_ids=tuple(f"doc{n}#c{n}" for n in range(8)), index_version="v3"),
        LLMRequested(step=1, model="smollm2", prompt_hash="ab" * 16, messages=prompt, turn=turn),
        LLMCompleted(step=1, model="smollm2", prompt_hash="ab" * 16, tool_calls=(call,), tokens_in=900),
        ToolIntent(step=1, call_id=call.id, tool="make_table", args={"rows": 3}, idempotency_key="k" * 64),
        ToolResult(step=1, call_id=call.id, tool="make_table", idempotency_key="k" * 64, result="|a|b|" * 60),
        LLMRequested(step=2, model="smollm2", prompt_hash="cd" * 16, messages=prompt, turn=turn),
        LLMCompleted(step=2, model="smollm2", prompt_hash="cd" * 16, text=answer, tokens_in=1200, turn=turn),
        AnswerCompleted(
            text=answer,
            citations=tuple(Citation(n=n, chunk_id=f"doc{n}#c{n}", doc_id=f"doc{n}") for n in (1, 2, 3)),
            turn=turn,
        ),
    ]


def conversation(events: int) -> list[Event]:
    out: list[Event] = []
    turn = 0
    while len(out) < events:
        turn += 1
        out += agent_turn(turn)
    return out[:events]


def summary(samples_s: list[float]) -> str:
    ordered = sorted(samples_s)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    median = statistics.median(ordered)
    return f"median {median * 1000:8.2f} ms   p95 {p95 * 1000:8.2f} ms   (n={len(ordered)})"


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def bench_appends(log: ConversationLog, lease: Lease, items: list[Event] | list[Delta]) -> None:
    samples = []
    for item in items:
        start = time.perf_counter()
        log.append(lease, [item])
        samples.append(time.perf_counter() - start)
    kind = "delta" if isinstance(items[0], Delta) else "event"
    rate = len(samples) / sum(samples)
    print(f"fenced append, batch of 1 ({kind}):  {rate:8.0f} /s   latency {summary(samples)}")


def bench_replay(log: ConversationLog, events: int, runs: int) -> None:
    conv_id = f"replay-{events}"
    lease = log.acquire(conv_id, "bench", LEASE_MS)
    items = conversation(events)
    ids: list[str] = []
    for start in range(0, len(items), SETUP_BATCH):
        ids += log.append(lease, items[start : start + SETUP_BATCH])
    size = sum(len(encode(i)) for i in items) / len(items)

    full = timed(lambda: log.read(conv_id), runs)
    state = os.urandom(SNAPSHOT_STATE_BYTES)
    log.save_snapshot(lease, state, ids[-SNAPSHOT_EVERY_EVENTS])
    behind = timed(lambda: log.read_from_snapshot(conv_id), runs)
    log.save_snapshot(lease, state, ids[-1])
    at_end = timed(lambda: log.read_from_snapshot(conv_id), runs)

    print(f"replay {events:>6} events (avg {size:.0f} B/event), read + decode:")
    print(f"    in full                                  {summary(full)}")
    print(f"    snapshot {SNAPSHOT_EVERY_EVENTS - 1} events before the end       {summary(behind)}")
    print(f"    snapshot at the end                      {summary(at_end)}")


@contextmanager
def redis_url(fsync: str) -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp), fsync=fsync) as server:
        yield server.url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--fsync", choices=["always", "everysec"], default=Settings.from_env().redis_fsync)
    options = parser.parse_args()
    with redis_url(options.fsync) as url:
        client = redis.Redis.from_url(url)
        client.flushdb()
        log = ConversationLog(client)
        fsync = client.config_get("appendfsync")["appendfsync"]
        print(f"redis {client.info('server')['redis_version']} at {url}, appendfsync {fsync}")
        lease = log.acquire("appends", "bench", LEASE_MS)
        bench_appends(log, lease, conversation(options.appends))
        bench_appends(log, lease, [Delta(text=" token", step=2) for _ in range(options.appends)])
        for events in (1_000, 10_000):
            bench_replay(log, events, options.runs)
        client.close()


if __name__ == "__main__":
    main()
