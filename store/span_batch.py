"""One thread a process that makes the queued spans and hands them on, in batches (`store.tracing`).

    batcher = SpanBatcher(sink, delay_ms=, max_spans=, batch_spans=, close=, buffer=)  or .from_env(...)
    batcher.later(make)        `make()` returns finished spans (`store.tracing.finished(..., into=[])`:
                               SpanRecords, encoded as they are by `store.otlp`)
    batcher.on_end(span)       a span ended elsewhere (the web's live `ask`): the batcher is a SpanProcessor
    batcher.flush()            make and hand on everything queued, in the calling thread
    batcher.shutdown()         flush, stop the thread and the sink

The spans wait in a `buffer` and `sink` gets what it takes: with `store.otlp.Encoded` (what
`store.tracing.configure` sets up: the batcher is then the provider's only span processor, in place of the
SDK's BatchSpanProcessor) each span is encoded as it is made and waits as bytes, and the sink is the
exporter's `post` of a request's bytes; with `SpanList` (the default) the sink gets the spans, as an
exporter's `export` or another provider's span processors (`store.tracing.install`). The thread wakes
every `delay_ms` (OTEL_BSP_SCHEDULE_DELAY), or when MAKES_PER_WAKE turns or `batch_spans` spans
(OTEL_BSP_MAX_EXPORT_BATCH_SIZE) wait, makes what is queued, and hands the spans on at most `batch_spans`
at a time: full batches at once, the rest when `delay_ms` has passed since it last handed spans on.

Why not the SDK's pipeline for a turn's spans: made one turn at a time between the turn's other work, they
cost about three times the CPU of the same spans made in a batch (cold code and data each time), and the
SDK's processor takes each span on its own (`on_end`: its checks, a queue append, a second thread). Bounded:
at most MAX_QUEUED_MAKES turns wait to be made and `max_spans` spans (OTEL_BSP_MAX_QUEUE_SIZE) to be handed
on; more are dropped, logged once. A killed process loses what waits, as the SDK's processor would.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from opentelemetry.sdk.trace import SpanProcessor

log = logging.getLogger(__name__)

# Turns queued that wake the thread before its delay: what waits is traced by the garbage collector (64
# Q&A turns' steps: ~1,000 objects), made and encoded in one go, then freed. The larger the batch, the
# warmer its code and data: 16 cost the thread 63-67 µs a Q&A turn, 64 48-60 µs (bench/observability.py,
# interleaved runs, README "Traces").
MAKES_PER_WAKE = 64
MAX_QUEUED_MAKES = 8192  # turns waiting for their spans to be made, at most
THREAD_NAME = "docent-spans"
# The SDK's names; its defaults but for the sizes, four times its 2048 / 512: an OTLP/HTTP POST costs about
# 1.4 ms of CPU whatever its size through requests, ~0.8 ms through the urllib3 transport store.otlp picks
# (8-span turns, requests: 21.6 us a turn in 512-span batches, 6.5 in 2048), and a 2048-span body (~370 KB)
# is well within a collector's limits.
DEFAULTS = {
    "OTEL_BSP_SCHEDULE_DELAY": 5000,
    "OTEL_BSP_MAX_QUEUE_SIZE": 8192,
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": 2048,
}

Spans = Sequence[Any]  # store.tracing.SpanRecord, opentelemetry.sdk.trace.ReadableSpan
Make = Callable[[], Spans]
Closer = Callable[[], object] | None


class Buffer(Protocol):
    """Where spans wait to be handed on: `take(n)` is what the sink gets for the first n."""

    def __len__(self) -> int: ...
    def add(self, spans: Spans) -> None: ...
    def take(self, limit: int) -> Any: ...


class SpanList:
    """The spans themselves, handed on as a list (to an installed provider's processors)."""

    def __init__(self) -> None:
        self.spans: deque[Any] = deque()

    def __len__(self) -> int:
        return len(self.spans)

    def add(self, spans: Spans) -> None:
        self.spans.extend(spans)

    def take(self, limit: int) -> list[Any]:
        return [self.spans.popleft() for _ in range(min(limit, len(self.spans)))]


def sdk_env(env: Mapping[str, str]) -> dict[str, int]:
    """The OTEL_BSP_* settings; a malformed value is the default."""
    out = {}
    for name, default in DEFAULTS.items():
        try:
            out[name] = max(1, int(env.get(name, "") or default))
        except ValueError:
            out[name] = default
    return out


class SpanBatcher(SpanProcessor):
    def __init__(
        self,
        sink: Callable[[Any], object],
        *,
        delay_ms: int,
        max_spans: int,
        batch_spans: int,
        close: Closer = None,
        buffer: Callable[[], Buffer] = SpanList,
    ) -> None:
        self.sink, self.close, self.buffer = sink, close, buffer
        self.delay_s, self.max_spans, self.batch_spans = delay_ms / 1000, max_spans, batch_spans
        self._starting = threading.Lock()
        self._makes: deque[Make] = deque()
        self._spans: Buffer = buffer()
        self._running = threading.Lock()  # one batch at a time: the thread's or a flush
        self._wake = threading.Event()
        self._pid = 0  # the process whose thread runs (0: none yet, or forked since)
        self._fork_hook = False
        self._stopped = False
        self._dropped = 0

    @classmethod
    def from_env(
        cls,
        sink: Callable[[Any], object],
        env: Mapping[str, str],
        close: Callable[[], object] | None = None,
        buffer: Callable[[], Buffer] = SpanList,
    ) -> SpanBatcher:
        found = sdk_env(env)
        return cls(
            sink, delay_ms=found["OTEL_BSP_SCHEDULE_DELAY"], max_spans=found["OTEL_BSP_MAX_QUEUE_SIZE"],
            batch_spans=found["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"], close=close, buffer=buffer,
        )  # fmt: skip

    # -- queueing (any thread) ----------------------------------------------------------------------------

    def later(self, make: Make) -> None:
        self._started()
        if len(self._makes) >= MAX_QUEUED_MAKES:
            self._drop("turns")
            return
        self._makes.append(make)
        if len(self._makes) == MAKES_PER_WAKE:
            self._wake.set()

    def on_end(self, span: Any) -> None:  # a SpanProcessor's (the SDK calls on_start, _on_ending: no-ops)
        context = span.context
        if context is None or not context.trace_flags.sampled or self._stopped:
            return
        self._started()
        self._keep([span])

    # -- handing on (the thread, or the caller of flush) --------------------------------------------------

    def flush(self) -> None:
        with self._running:
            while self._makes:
                self._make_queued()
            self._hand_on()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self.flush()
        return True

    def shutdown(self) -> None:
        self.flush()
        self._stopped = True
        self._wake.set()
        if self.close is not None:
            self.close()

    def _make_queued(self) -> None:
        while self._makes:
            make = self._makes.popleft()
            try:
                self._keep(make())
            except Exception:  # a span is never worth a worker: log it, go on
                log.exception("tracing: making a turn's spans failed")

    def _keep(self, spans: Spans) -> None:
        room = self.max_spans - len(self._spans)
        if room < len(spans):
            self._drop("spans")
            spans = spans[: max(0, room)]
        self._spans.add(spans)
        if len(self._spans) >= self.batch_spans:
            self._wake.set()

    def _hand_on(self, whole_batches_only: bool = False) -> None:
        while len(self._spans) >= (self.batch_spans if whole_batches_only else 1):
            count = min(self.batch_spans, len(self._spans))
            try:
                self.sink(self._spans.take(count))
            except Exception:
                log.exception("tracing: handing on %d spans failed", count)

    def _drop(self, what: str) -> None:
        self._dropped += 1
        if self._dropped == 1:
            log.warning(
                "tracing: too many %s wait (OTEL_BSP_MAX_QUEUE_SIZE, MAX_QUEUED_MAKES): dropping", what
            )

    # -- the thread ---------------------------------------------------------------------------------------

    def _started(self) -> None:
        """The thread of this process, started by the first span (a forked child starts its own, with empty
        queues: `_forked` forgets the parent's thread)."""
        if self._pid:
            return
        with self._starting:
            if self._pid:
                return
            self._makes, self._spans, self._running = deque(), self.buffer(), threading.Lock()
            self._wake, self._pid = threading.Event(), os.getpid()
            threading.Thread(target=self._run, name=THREAD_NAME, daemon=True).start()
            if not self._fork_hook:
                self._fork_hook = True
                forked = weakref.WeakMethod(self._forked)
                os.register_at_fork(after_in_child=lambda: (hook := forked()) is not None and hook())

    def _forked(self) -> None:
        self._pid, self._starting = 0, threading.Lock()

    def _run(self) -> None:
        """Make what is queued at every wake; hand on full batches at once, the rest `delay_s` after the
        last handing on (a POST costs the same whatever its size: one per wake was one per 16 turns)."""
        pid, sent = self._pid, time.monotonic()
        while self._pid == pid and not self._stopped:
            self._wake.wait(max(0.0, sent + self.delay_s - time.monotonic()))
            self._wake.clear()
            with self._running:
                self._make_queued()
                due = time.monotonic() >= sent + self.delay_s
                if due or len(self._spans) >= self.batch_spans:
                    self._hand_on(whole_batches_only=not due)
                    sent = time.monotonic() if due else sent
