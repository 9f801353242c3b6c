"""Conversation actor bench: activation latency, events appended per second, replay with and without snapshot.

    .venv/bin/python -m bench.actors [--samples 200] [--steps 40] [--runs 21] [--eps-runs 5] [--traces]

Starts an embedded Redis, the scripted OpenAI-compatible LLM (no delays), the counting HTTP sink and one
in-process dramatiq worker (Redis broker, one thread) in a temporary directory.

  activation latency  `advance` enqueued -> the worker hands the message to the actor (a broker middleware
                      stamps `before_process_message`), one message at a time on an idle worker; the
                      messages name unknown conversations, so each activation is a no-op.
  events per second   one activation running an agent turn of `--steps` tool round trips (LLM over HTTP,
                      `http_request` GET to the sink), durable events appended / activation wall time;
                      the median of `--eps-runs` turns, with their median process CPU time per turn.

Metrics (prometheus-client) are always on; `--traces` also exports OpenTelemetry traces (OTLP/HTTP, the
span batcher of store.span_batch) to a receiver in a process of its own, as `OTEL_EXPORTER_OTLP_ENDPOINT`
does; each events-per-second turn flushes its spans inside its CPU time (one turn a batch: dearer than the
batches a busy worker makes).
  replay              `activate()` of a finished 1,000-event conversation (the realistic event mix of
                      bench/log.py: lease, snapshot + tail read, fold, inbox check, release), without and
                      with a snapshot at the end of the log.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware

from actors.broker import CONVERSATION_QUEUE, setup_broker
from actors.state import ConversationState, dump_state, fold
from actors.testing import HttpSink, ScriptedLLMThread, SinkThread
from actors.testing.otlp_receiver import ReceiverProcess
from bench.log import conversation as realistic_events
from store import tracing
from store.events import LLMCompleted, UserMessage
from store.redis import EmbeddedRedis, free_port
from store.settings import Settings

REPLAY_EVENTS = 1_000
SETUP_BATCH = 200
MESSAGE_WAIT_S = 5.0
GAP_S = 0.25  # between latency samples: the worker is idle (polling with backoff) when the next one arrives
# dramatiq's Redis consumer polls an empty queue with exponential backoff capped at the worker timeout
# (default 1000 ms, env `dramatiq_worker_timeout`). The conversation workers want it small.
WORKER_TIMEOUTS_MS = (1000, 20)


class Probe(Middleware):
    """Stamps the moment a worker hands each message to its actor."""

    def __init__(self) -> None:
        self.running: dict[str, float] = {}
        self.event = threading.Condition()

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        with self.event:
            self.running[message.message_id] = time.perf_counter()
            self.event.notify_all()


def worker_settings(data_dir: Path, redis_url: str, llm_url: str, max_steps: int) -> Settings:
    """An in-process worker's settings: the hash embedder, the scripted LLM, HTTP to the local sink."""
    return Settings.from_env({
        "DOCENT_DATA_DIR": str(data_dir), "DOCENT_REDIS_URL": redis_url,
        "DOCENT_EMBED_MODEL": "hash", "DOCENT_LLM_BACKEND": "openai", "DOCENT_LLM_URL": llm_url,
        "DOCENT_HTTP_ALLOW_HOSTS": "127.0.0.1", "DOCENT_HTTP_ALLOW_PRIVATE": "true",
        "DOCENT_MAX_STEPS": str(max_steps),
    })  # fmt: skip


def summary(samples_s: list[float]) -> str:
    ordered = sorted(samples_s)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered) * 1000:7.2f} ms   p95 {p95 * 1000:7.2f} ms   (n={len(ordered)})"


def bench_activation_latency(broker: dramatiq.Broker, probe: Probe, samples: int, timeout_ms: int) -> None:
    latencies = []
    for n in range(samples):
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=CONVERSATION_QUEUE, actor_name="advance", args=(f"idle-{n}",), kwargs={}, options={}
        )
        sent = time.perf_counter()
        broker.enqueue(message)
        message_id = message.message_id
        with probe.event:
            probe.event.wait_for(lambda: message_id in probe.running, MESSAGE_WAIT_S)  # noqa: B023
        if message_id in probe.running:
            latencies.append(probe.running[message_id] - sent)
        time.sleep(GAP_S)
    print(f"activation latency (enqueue -> actor running), idle worker, worker timeout {timeout_ms:4d} ms: "
          f"{summary(latencies)}")  # fmt: skip


def bench_events_per_second(
    settings: Settings, llm: ScriptedLLMThread, sink_url: str, steps: int, runs: int
) -> None:
    from actors import conversation, runtime

    llm.add_script(
        "bench",
        {
            "steps": [
                *[{"text": "checking", "tool_calls": [{"name": "http_request", "arguments": {
                    "url": f"{sink_url}/item/{n}", "method": "GET"}}]} for n in range(steps)],
                {"text": "done"},
            ]
        },
    )  # fmt: skip
    rt = runtime.Runtime.from_settings(settings)
    rates, cpu_ms, llm_ms = [], [], []
    for n in range(runs):
        conv = f"eps-{n}"
        rt.log.post_inbox(
            conv, UserMessage(text="[script:bench] check every item", mode="agent", tenant="t", user="u")
        )
        started, started_cpu = time.perf_counter(), time.process_time()
        conversation.activate(conv, rt)
        elapsed = time.perf_counter() - started
        tracing.flush()  # the turn's spans made and exported now, in its CPU time (no tracing: nothing)
        cpu_ms.append((time.process_time() - started_cpu) * 1000)
        events = rt.log.length(conv)
        rates.append(events / elapsed)
        llm_ms += [e.latency_ms for _, e in rt.log.read(conv) if isinstance(e, LLMCompleted)]
    cpu, llm_median = statistics.median(cpu_ms), statistics.median(llm_ms)
    print(f"events appended per second, one worker thread, agent turn of {steps} tool steps: "
          f"{statistics.median(rates):7.0f} events/s median of {runs} ({events} events a turn; process CPU "
          f"{cpu:.1f} ms a turn; LLM call median {llm_median:.1f} ms)")  # fmt: skip
    rt.close()


def bench_replay(settings: Settings, runs: int) -> None:
    from actors import conversation, runtime

    rt = runtime.Runtime.from_settings(settings)
    conv = "replay"
    lease = rt.log.acquire(conv, "bench", 600_000)
    items = realistic_events(REPLAY_EVENTS)
    ids: list[str] = []
    for start in range(0, len(items), SETUP_BATCH):
        ids += rt.log.append(lease, items[start : start + SETUP_BATCH])
    rt.log.release(lease)

    def timed() -> list[float]:
        out = []
        for _ in range(runs):
            start = time.perf_counter()
            assert conversation.activate(conv, rt) == "done"
            out.append(time.perf_counter() - start)
        return out

    without = timed()
    state = ConversationState(conversation_id=conv)
    for entry_id, event in rt.log.read(conv):
        fold(state, entry_id, event)
    lease = rt.log.acquire(conv, "bench", 600_000)
    rt.log.save_snapshot(lease, dump_state(state), ids[-1])
    rt.log.release(lease)
    with_snapshot = timed()
    print(f"activation of a finished {REPLAY_EVENTS}-event conversation, no snapshot:  {summary(without)}")
    print(
        f"activation of a finished {REPLAY_EVENTS}-event conversation, snapshot:     {summary(with_snapshot)}"
    )
    rt.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--eps-runs", type=int, default=5)
    parser.add_argument("--traces", action="store_true", help="export OTLP traces to a local receiver")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis", port=free_port()) as redis:
        sink = HttpSink()
        with ReceiverProcess() as collector, SinkThread(sink), ScriptedLLMThread() as llm:
            if args.traces:
                os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector.endpoint
                tracing.configure("worker")
            print(f"traces: {'on (OTLP to a local receiver)' if args.traces else 'off'}; metrics: on")
            settings = worker_settings(Path(tmp) / "data", redis.url, llm.url, args.steps + 5)
            broker = setup_broker(settings)
            probe = Probe()
            broker.add_middleware(probe)
            from actors import conversation, runtime  # conversation declares `advance` on this broker

            assert conversation.advance.actor_name == "advance"
            runtime.configure(runtime.Runtime.from_settings(settings))
            for timeout_ms in WORKER_TIMEOUTS_MS:
                worker = dramatiq.Worker(
                    broker, queues={CONVERSATION_QUEUE}, worker_threads=1, worker_timeout=timeout_ms
                )
                worker.start()
                try:
                    time.sleep(0.5)
                    bench_activation_latency(broker, probe, args.samples, timeout_ms)
                finally:
                    worker.stop()
            bench_events_per_second(settings, llm, sink.url, args.steps, args.eps_runs)
            bench_replay(settings, args.runs)
            tracing.shutdown()  # flush what is queued
            if args.traces:
                time.sleep(0.5)
                print(f"spans received by the OTLP receiver: {collector.count()}")


if __name__ == "__main__":
    main()
