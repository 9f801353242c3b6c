"""Queue choice beside a Redis Cluster: activation latency on dramatiq's Redis broker (a separate
single-node Redis) and on its RabbitMQ broker (Debian's rabbitmq-server), one message at a time.

    .venv/bin/python -m bench.broker [--samples 200] [--brokers redis rabbitmq]

Each broker gets one in-process dramatiq worker (one thread) consuming the `conversation` queue with a
no-op `advance` actor; latency is `advance` enqueued -> the worker hands it to the actor (bench/actors.py's
Probe), measured on an idle worker with a 0.25 s gap between samples, and again back to back (the next
message sent as soon as the previous one runs). The Redis worker polls with `dramatiq_worker_timeout`
20 ms, what `docent run` sets; RabbitMQ pushes to its consumer. Also printed: enqueue calls per second
from one thread (the web process's `advance` sends).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dramatiq

from actors.broker import ADVANCE_ACTOR, CONVERSATION_QUEUE, make_broker
from actors.testing.rabbitmq import RabbitServer, available
from bench.actors import MESSAGE_WAIT_S, Probe, summary
from store.redis import EmbeddedRedis

REDIS_WORKER_TIMEOUT_MS = 20  # server/runner.py WORKER_POLL_TIMEOUT_MS
IDLE_GAP_S = 0.25
ENQUEUE_COUNT = 2_000


@contextmanager
def broker_url(kind: str, scratch: Path) -> Iterator[str]:
    if kind == "redis":
        with EmbeddedRedis(scratch / "redis") as server:
            yield server.url
    else:
        with RabbitServer(scratch / "rabbitmq") as rabbit:
            yield rabbit.url


def activations(broker: dramatiq.Broker, probe: Probe, samples: int, gap_s: float) -> list[float]:
    latencies = []
    for n in range(samples):
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=CONVERSATION_QUEUE, actor_name=ADVANCE_ACTOR, args=(f"c{n}",), kwargs={}, options={}
        )
        sent = time.perf_counter()
        broker.enqueue(message)
        with probe.event:
            probe.event.wait_for(lambda: message.message_id in probe.running, MESSAGE_WAIT_S)  # noqa: B023
        if message.message_id in probe.running:
            latencies.append(probe.running[message.message_id] - sent)
        time.sleep(gap_s)
    return latencies


def enqueues_per_s(broker: dramatiq.Broker) -> float:
    start = time.perf_counter()
    for n in range(ENQUEUE_COUNT):
        broker.enqueue(dramatiq.Message(
            queue_name="bench-sink", actor_name=ADVANCE_ACTOR, args=(f"s{n}",), kwargs={}, options={}
        ))  # fmt: skip
    return ENQUEUE_COUNT / (time.perf_counter() - start)


def bench(kind: str, url: str, samples: int) -> None:
    broker = make_broker(url)
    probe = Probe()
    broker.add_middleware(probe)
    dramatiq.Actor(
        lambda conv_id: None, broker=broker, actor_name=ADVANCE_ACTOR, queue_name=CONVERSATION_QUEUE,
        priority=0, options={},
    )  # fmt: skip
    worker = dramatiq.Worker(
        broker, queues={CONVERSATION_QUEUE}, worker_threads=1, worker_timeout=REDIS_WORKER_TIMEOUT_MS
    )
    worker.start()
    try:
        time.sleep(1.0)
        activations(broker, probe, 5, 0.0)  # warm: connections, queue declarations
        idle = activations(broker, probe, samples, IDLE_GAP_S)
        busy = activations(broker, probe, samples, 0.0)
        print(f"{kind:8s} activation, idle worker:    {summary(idle)}")
        print(f"{kind:8s} activation, back to back:   {summary(busy)}")
        print(f"{kind:8s} enqueues/s from one thread: {enqueues_per_s(broker):8.0f}")
    finally:
        worker.stop()
        broker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--brokers", nargs="+", choices=["redis", "rabbitmq"], default=["redis", "rabbitmq"])
    args = parser.parse_args()
    for kind in args.brokers:
        if kind == "rabbitmq" and not available():
            print("rabbitmq: rabbitmq-server is not installed (apt-get install -y rabbitmq-server); skipped")
            continue
        with tempfile.TemporaryDirectory() as scratch, broker_url(kind, Path(scratch)) as url:
            bench(kind, url, args.samples)


if __name__ == "__main__":
    main()
