"""What metrics and tracing cost a turn: the same turns with them off, with metrics, with metrics + traces.

    .venv/bin/python -m bench.observability [--turns 60] [--steps 10] [--gc]

Starts an embedded Redis, the scripted OpenAI-compatible LLM (no delays), the counting HTTP sink and an
OTLP/HTTP receiver (`actors.testing.otlp_receiver`) in a temporary directory, builds a small index (hash
embedder) and runs `activate()` turns in this process, the three configurations interleaved turn by turn
(rotating which goes first), so a noisy neighbour on the shared machine hits all three alike:

  off              the actor's metric calls replaced by no-ops, no tracer
  metrics          prometheus-client in multiprocess mode (PROMETHEUS_MULTIPROC_DIR, as `docent run` sets it)
  metrics+traces   the same, plus OTLP export to the receiver (store.span_batch: spans made and encoded
                   MAKES_PER_WAKE (64) turns at once, posted 2048 at a time or every OTEL_BSP_SCHEDULE_DELAY)

Two turn shapes: a Q&A turn (retrieval + one streamed LLM call + answer) and an agent turn of `--steps`
tool round trips (`http_request` GETs to the sink). Usage accounting (`actors.spend`) runs in all three.
Prints each configuration's p50 / p95 activation wall time and process CPU time (every thread of this
process: the actor, the in-process scripted LLM and sink; not Redis, not the receiver) per turn, and the p50
overhead against `off`; on a loaded machine the CPU time is the steadier of the two. The tracing thread
(store.span_batch: it makes the spans and exports them) works beside whichever turn runs, an `off` one as
often as not: its CPU (a per-thread clock) is taken out of every turn's window and its whole CPU over the
run, the final flush included, is shared out evenly over the traced turns. The second line of each is the
CPU time of the actor's thread alone plus that share (without the scripted LLM's and the sink's threads,
which do the same work in every configuration but add their noise). `paired` is the median, over the rounds,
of a configuration's CPU time over `off`'s in the same round (the three run back to back). The metrics
thread (store.metrics_tally: it writes the counted observations to the multiprocess files every FLUSH_MS) is
accounted the same way, its CPU shared out over the turns with metrics (both metric configurations).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_METRICS_DIR = tempfile.mkdtemp(prefix="docent-bench-metrics-")
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", _METRICS_DIR)  # before prometheus_client is imported

from actors.broker import use_stub_broker  # noqa: E402

use_stub_broker()  # the actor module declares `advance`; nothing is consumed here

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402

from actors import conversation, runtime  # noqa: E402
from actors.state import ConversationState, fold  # noqa: E402
from actors.testing import HttpSink, ScriptedLLMThread, SinkThread  # noqa: E402
from actors.testing.otlp_receiver import ReceiverProcess  # noqa: E402
from actors.turn_trace import TurnTrace  # noqa: E402
from bench.actors import worker_settings  # noqa: E402
from index.embed import load_embedder  # noqa: E402
from index.ingest import Ingestor  # noqa: E402
from store import metrics, metrics_tally, span_batch, tracing  # noqa: E402
from store.events import RetrievalDone, UserMessage  # noqa: E402
from store.redis import EmbeddedRedis, free_port  # noqa: E402
from store.settings import Settings  # noqa: E402

ARMS = ("off", "metrics", "metrics+traces")
SEAMS = ("observe_event", "observe_first_token", "observe_retrieval")
DOCUMENTS = 40
WARMUP_TURNS = 2
SEAM_REPEATS = 300
BSP_THREAD = "OtelBatch"  # the SDK's batch span processor's thread: OtelBatchSpanRecordProcessor


def summary(samples_s: list[float]) -> tuple[float, float]:
    ordered = sorted(samples_s)
    return statistics.median(ordered) * 1000, ordered[
        min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))
    ] * 1000


class Collections:
    """`--gc`: the garbage collections that start during each configuration's turns, per generation, and
    the CPU time of the thread that ran them (gc.callbacks): a configuration whose objects outlive young
    collections brings more (and full ones sooner), whichever turn then pays."""

    def __init__(self) -> None:
        self.current = ""
        self.started = 0.0
        self.counts: dict[tuple[str, int], list[float]] = {}

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.thread_time()
        elif self.current:
            found = self.counts.setdefault((self.current, info["generation"]), [0, 0.0])
            found[0] += 1
            found[1] += time.thread_time() - self.started

    def report(self) -> None:
        for name in ARMS:
            parts = [
                f"gen{g} {int(c[0])} ({c[1] * 1000:.0f} ms)"
                for g in range(3)
                if (c := self.counts.get((name, g)))
            ]
            print(f"        garbage collections during {name} turns: {', '.join(parts) or 'none'}")


COLLECTIONS = Collections()


@contextmanager
def arm(name: str, provider: Any) -> Iterator[None]:
    COLLECTIONS.current = name
    saved = {seam: getattr(metrics, seam) for seam in SEAMS}
    if name == "off":
        for seam in SEAMS:
            setattr(metrics, seam, lambda *args, **kwargs: None)
    tracing.reset()
    if name == "metrics+traces":
        tracing.install(provider)
    try:
        yield
    finally:
        COLLECTIONS.current = ""
        for seam, fn in saved.items():
            setattr(metrics, seam, fn)
        tracing.reset()


def build_index(settings: Settings) -> None:
    with Ingestor(settings, load_embedder(settings, "hash", purpose="offline")) as ingestor:
        for n in range(DOCUMENTS):
            text = (
                f"# Policy {n}\n\nExpense rule {n}: receipts over {n * 10} euros need a manager's approval.\n"
            )
            ingestor.ingest_document(f"policy-{n}", data=text.encode(), fmt="md", title=f"Policy {n}")


def threads_cpu_s() -> float:
    """CPU time so far of this process's tracing threads: the span maker, the batch span processor's."""
    return _cpu_of(lambda name: name == span_batch.THREAD_NAME or name.startswith(BSP_THREAD))


def metrics_thread_cpu_s() -> float:
    """CPU time so far of the thread that writes the counted observations to the multiprocess files."""
    return _cpu_of(lambda name: name == metrics_tally.THREAD_NAME)


def background_cpu_s() -> float:
    """The tracing threads' and the metrics thread's CPU time so far, in one pass over the threads."""
    names = (span_batch.THREAD_NAME, metrics_tally.THREAD_NAME)
    return _cpu_of(lambda name: name in names or name.startswith(BSP_THREAD))


def _cpu_of(chosen: Callable[[str], bool]) -> float:
    total = 0.0
    for thread in threading.enumerate():
        if thread.ident is not None and chosen(thread.name):
            total += time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    return total


def run(
    settings: Settings, turns: int, shape: str, make: Callable[[int], UserMessage], provider: Any
) -> None:
    rt = runtime.Runtime.from_settings(settings)
    runtime.configure(rt)
    times: dict[str, list[float]] = {a: [] for a in ARMS}
    cpu: dict[str, list[float]] = {a: [] for a in ARMS}
    own: dict[str, list[float]] = {a: [] for a in ARMS}  # the actor's thread (this one) alone
    background, background_metrics = threads_cpu_s(), metrics_thread_cpu_s()
    for n in range(turns):
        order = ARMS[n % 3 :] + ARMS[: n % 3]
        for name in order:
            conv = f"{shape}-{name}-{n}"
            rt.log.post_inbox(conv, make(n))
            with arm(name, provider):
                # the background threads' clocks are read outside the window (reading them costs this thread
                # a few µs in every configuration): their work is the traced (metered) turns', whichever
                # turn it ran beside, and is counted below
                started_bg = background_cpu_s()
                started, started_cpu = time.perf_counter(), time.process_time()
                started_own = time.thread_time()
                assert conversation.activate(conv, rt) == "done"
                ended_own, ended_cpu, ended = time.thread_time(), time.process_time(), time.perf_counter()
                beside = background_cpu_s() - started_bg
                own[name].append(ended_own - started_own)
                times[name].append(ended - started)
                cpu[name].append(ended_cpu - started_cpu - beside)
    flushed = time.thread_time()
    tracing.flush()  # the spans still queued: made and exported here
    written = time.thread_time()
    metrics_tally.flush()  # the counts still held: written here
    spent = written - flushed + threads_cpu_s() - background
    per_turn = spent / turns  # the tracing threads' CPU, shared out over the traced turns
    spent = time.thread_time() - written + metrics_thread_cpu_s() - background_metrics
    per_metered = spent / (2 * turns)  # the metrics thread's, over the turns with metrics
    for samples in (cpu, own):
        samples["metrics"] = [c + per_metered for c in samples["metrics"]]
        samples["metrics+traces"] = [c + per_turn + per_metered for c in samples["metrics+traces"]]
    base, _ = summary(times["off"])
    for name in ARMS:
        p50, p95 = summary(times[name])
        wall = f"wall p50 {p50:7.2f} ms  p95 {p95:7.2f} ms ({100 * (p50 - base) / base:+5.1f}%)"
        print(f"{shape:>6} turn, {name:>15}: {wall}   process CPU {_cpu(cpu, name)}   n={len(times[name])}")
        print(f"{'':>22} actor thread + tracing threads CPU {_cpu(own, name)}")
    print(
        f"        of it, the tracing threads (span batcher, exporter): {per_turn * 1e6:.0f} µs a traced turn;"
        f" the metrics thread: {per_metered * 1e6:.1f} µs a turn with metrics"
    )
    seams(rt, f"{shape}-off-0", provider)
    rt.close()


def _cpu(samples: dict[str, list[float]], name: str) -> str:
    """p50 / p95 and their overhead over `off`; `paired`: the median over the rounds of the ratio to `off`."""
    base, _ = summary(samples["off"])
    p50, p95 = summary(samples[name])
    paired = 100 * (statistics.median(a / b for a, b in zip(samples[name], samples["off"], strict=True)) - 1)
    return (
        f"p50 {p50:6.2f} ms  p95 {p95:6.2f} ms ({100 * (p50 - base) / base:+5.1f}%)  paired {paired:+5.1f}%"
    )


def seams(rt: runtime.Runtime, conv: str, provider: Any) -> None:
    """The seams alone: one logged turn's events folded and observed SEAM_REPEATS times per configuration."""
    events = [e for _, e in rt.log.read(conv)]
    timings = {"embed": 1.0, "ann": 0.5, "bm25": 2.0, "fuse": 0.2, "catalog": 0.3, "total": 4.0}
    cost: dict[str, float] = {}
    for name in ARMS:
        with arm(name, provider):
            COLLECTIONS.current = ""  # the turns' collections only
            started = time.process_time()
            for _ in range(SEAM_REPEATS):
                state = ConversationState(conversation_id=conv)
                trace = TurnTrace(conv)
                for n, event in enumerate(events):
                    if isinstance(event, RetrievalDone):  # as the actor: the search's spans, then its event
                        metrics.observe_retrieval(timings)
                        trace.retrieval(state, timings, 4.0, 3)
                    fold(state, f"1-{n}", event)
                    metrics.observe_event(event, now_ms=event.at_ms, asked_at_ms=events[0].at_ms, route="qa")
                    trace.observe(state, event)
                trace.close()
            if isinstance(provider, TracerProvider):
                tracing.flush()  # making the spans queued and their export are part of their cost
            metrics_tally.flush()  # and writing the counts to the files
            cost[name] = (time.process_time() - started) / SEAM_REPEATS * 1e6
    print(f"        seams alone, {len(events)} events a turn: "
          + ", ".join(f"{n} {c:.0f} µs" for n, c in cost.items())
          + f" per turn (metrics +{cost['metrics'] - cost['off']:.0f} µs,"
          f" traces +{cost['metrics+traces'] - cost['metrics']:.0f} µs, process CPU)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=60)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--gc", action="store_true", help="count the garbage collections per configuration")
    args = parser.parse_args()
    if args.gc:
        gc.callbacks.append(COLLECTIONS)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis", port=free_port()) as redis:
        sink = HttpSink()
        # a process of its own: decoding the spans is the collector's work, not ours
        with ReceiverProcess() as collector, SinkThread(sink), ScriptedLLMThread() as llm:
            settings = worker_settings(Path(tmp) / "data", redis.url, llm.url, args.steps + 5)
            build_index(settings)
            os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector.endpoint
            os.environ["OTEL_BSP_MAX_QUEUE_SIZE"] = "65536"  # the seams' burst of spans: none dropped
            tracing.configure("worker")
            provider: Any = tracing.provider()
            llm.add_script("agent", {"steps": [
                *[{"text": "checking", "tool_calls": [{"name": "http_request", "arguments": {
                    "url": f"{sink.url}/item/{n}", "method": "GET"}}]} for n in range(args.steps)],
                {"text": "done"},
            ]})  # fmt: skip

            def qa(n: int) -> UserMessage:
                return UserMessage(
                    text=f"Which receipts need approval under rule {n}?", mode="qa", tenant="t", user="u"
                )

            def agent(n: int) -> UserMessage:
                return UserMessage(text="[script:agent] check every item", mode="agent", tenant="t", user="u")

            run(settings, args.turns, "qa", qa, provider)
            run(settings, max(1, args.turns // 3), "agent", agent, provider)
            tracing.flush()
            if args.gc:
                COLLECTIONS.report()
            time.sleep(1.0)
            print(f"spans received by the OTLP receiver: {collector.count()}")


if __name__ == "__main__":
    main()
