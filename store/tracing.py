"""OpenTelemetry traces: off unless an OTLP endpoint is configured, then exported over OTLP HTTP/protobuf.

    configure(role)                 each process once at start (web: "web", workers: "worker")
    tracer() -> Tracer | None       None when tracing is off: callers skip every span (no cost)
    traceparent(span) -> str        the span's W3C `traceparent`, carried in the inbox entry it caused
    parent_of(traceparent)          the SpanContext a child span of that traceparent starts under
    capture_content() -> bool       prompt and answer text in spans (off: opt-in, privacy)
    shutdown()                      flush what is queued (the web process's shutdown; atexit otherwise)
    install(provider) / reset()     another provider (an embedding application's, a test's in-memory one)
    begin(tracer, parent, name)     a span's sampled context, before the span is made with `finished`
    finished(tracer, parent, name, start_ns=, end_ns=, ...)  a span whose times are known when it is made
    children(tracer, parent, [(name, start_ns, end_ns), ...], into)  attribute-less children of a record
    readable(record) / readables(spans)  the SDK's ReadableSpan of a SpanRecord `finished` made
    later(make)                     `make()` (it returns finished spans) run on the span batcher's thread
    flush()                         make what `later` queued, then flush the provider (tests, benches)

Configuration is OpenTelemetry's own environment, read by the SDK: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turns tracing on; `OTEL_SERVICE_NAME` (default `docent`),
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_TRACES_SAMPLER` as the SDK documents them,
`OTEL_BSP_*` too (read by `store.span_batch`, larger default sizes); `OTEL_SDK_DISABLED=true` turns it
off again. Only the `http/protobuf` protocol is shipped
(no gRPC dependency): another `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL` stops the process with a
`config_error`. `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true` (the GenAI instrumentations'
switch) adds the prompt messages and the answer text to LLM spans; without it no question, prompt or
answer text is in any span.

The SDK is imported only when tracing is on; the API alone (`opentelemetry-api`) is cheap.

What a traced turn costs (bench/observability.py): a step's span is made after the step, from its event,
so its start and end are known at once; the turn's span is made when the activation ends, its attributes
gathered meanwhile. `finished` makes such a span as a `SpanRecord` (a tuple of its fields), without the
live `Span` (its lock, attribute cleaning, `on_start`) or the SDK's `ReadableSpan`: `store.otlp` encodes
records straight to the OTLP bytes, and `readable` makes the ReadableSpan only for other span processors
(an installed provider's). The turn's span is sampled by the tracer's sampler (`begin`), a step's follows
its parent's decision, as the default parent-based sampler decides. Tracing needs the SDK's tracer
(`install` takes an SDK provider).

Spans whose data is all known (a turn's, when its activation ends) are made off the turn's thread: `later`
queues a function that makes them, and the span batcher (`store.span_batch`, one thread a process) makes
what is queued in batches and hands the spans on: to the OTLP exporter, as the provider's span processor in
place of the SDK's BatchSpanProcessor (`configure`), or to an installed provider's processors (`install`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    Tracer,
    TraceState,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from store.exceptions import ConfigError
from store.span_record import SpanEvent, SpanRecord, readable, readables

log = logging.getLogger(__name__)

ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
SUPPORTED_PROTOCOL = "http/protobuf"
DEFAULT_SERVICE = "docent"
INSTRUMENTATION = "docent"

_propagator = TraceContextTextMapPropagator()
_state: dict[str, object] = {}  # "tracer", "provider", "capture": this process's configuration


def enabled_by(env: Mapping[str, str]) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(env.get(name, "").strip() for name in ENDPOINT_ENVS)


def check_protocol(env: Mapping[str, str]) -> None:
    """With tracing on, an OTLP protocol other than http/protobuf is a ConfigError."""
    if not enabled_by(env):
        return
    for name in PROTOCOL_ENVS:
        value = env.get(name, "").strip()
        if value and value != SUPPORTED_PROTOCOL:
            raise ConfigError(f"{name}={value!r}: Docent exports traces over {SUPPORTED_PROTOCOL} only")


def configure(role: str, env: Mapping[str, str] | None = None) -> bool:
    """Install this process's tracer provider when an endpoint is configured; True when tracing is on."""
    env = os.environ if env is None else env
    if "tracer" in _state:
        return _state["tracer"] is not None
    _state["capture"] = env.get(CAPTURE_CONTENT_ENV, "").strip().lower() == "true"
    if not enabled_by(env):
        _state["tracer"] = None
        return False
    check_protocol(env)
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider

    defaults = Resource({"service.name": DEFAULT_SERVICE, "docent.process": role, "process.pid": os.getpid()})
    resource = defaults.merge(OTELResourceDetector().detect())
    if env.get("OTEL_SERVICE_NAME", "").strip():
        resource = resource.merge(Resource({"service.name": env["OTEL_SERVICE_NAME"].strip()}))
    provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER, parent-based by default
    from store.otlp import Encoded, SpanExporter
    from store.span_batch import SpanBatcher

    exporter = SpanExporter()
    if exporter.posts_bytes():  # spans encoded as they are made, then waiting as bytes
        batcher = SpanBatcher.from_env(exporter.post, env, close=exporter.shutdown, buffer=Encoded)
    else:
        batcher = SpanBatcher.from_env(exporter.export, env, close=exporter.shutdown)
    provider.add_span_processor(batcher)  # its only one: the provider's shutdown (atexit too) flushes it
    tracer = provider.get_tracer(INSTRUMENTATION)
    _state["provider"], _state["batcher"], _state["tracer"] = provider, batcher, tracer
    _batchers.clear()  # `install(provider)` again (a bench's arms): the same batcher and tracer
    _batchers[id(provider)] = (provider, batcher, tracer)
    log.info("tracing: OTLP %s export on (%s)", SUPPORTED_PROTOCOL, role)
    return True


def tracer() -> Tracer | None:
    found = _state.get("tracer")
    return found if isinstance(found, Tracer) else None


def capture_content() -> bool:
    return _state.get("capture") is True


def traceparent(span: Span) -> str:
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent", "")


def parent_of(value: str) -> SpanContext | None:
    """The span context of a `traceparent` header value; None for an empty or malformed one (a new trace).
    The value `traceparent` writes (version 00, lower-case hex, no trace state) is read here; any other
    the propagator reads (it builds a Context and a span around the span context: ~5 µs a turn)."""
    if not value:
        return None
    plain = _TRACEPARENT_00.fullmatch(value)
    if plain is not None:
        trace_id, span_id = int(plain.group(1), 16), int(plain.group(2), 16)
        if trace_id and span_id:
            flags = TraceFlags(int(plain.group(3), 16))
            return SpanContext(trace_id, span_id, is_remote=True, trace_flags=flags, trace_state=None)
        return None
    found = trace.get_current_span(_propagator.extract({"traceparent": value})).get_span_context()
    return found if found.is_valid else None


_TRACEPARENT_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def provider() -> object | None:
    """The SDK TracerProvider in use (None when tracing is off)."""
    return _state.get("provider")


def flush() -> None:
    """Make the spans `later` queued and hand them on, in this thread, then flush the provider."""
    batcher, provider = _state.get("batcher"), _state.get("provider")
    if batcher is not None:
        batcher.flush()  # type: ignore[attr-defined]
    if provider is not None:
        provider.force_flush()  # type: ignore[attr-defined]


def shutdown() -> None:
    """Flush and stop the provider; the next `configure` (another app in this process) starts a new one."""
    flush()
    provider = _state.get("provider")
    _state.clear()
    if provider is not None:
        provider.shutdown()  # type: ignore[attr-defined]


def install(provider: object, *, capture: bool = False) -> None:
    """Use a given SDK `TracerProvider` (an embedding application's, or a test's in-memory exporter): the
    spans `later` makes go to its span processors (one batcher and one tracer per provider, kept across
    installs: a tracer of its own each time would be a scope of its own to the encoder)."""
    _state.clear()
    _state["provider"] = provider
    _state["capture"] = capture
    _state["batcher"], _state["tracer"] = _batcher_of(provider)


def _batcher_of(provider: object) -> tuple[object, Tracer]:
    found = _batchers.get(id(provider))
    if found is not None and found[0] is provider:
        return found[1], found[2]
    from store.span_batch import SpanBatcher

    tracer: Tracer = provider.get_tracer(INSTRUMENTATION)  # type: ignore[attr-defined]

    processor = _sdk(tracer).processor  # the provider's: every span processor added to it

    def sink(spans: Sequence[Any]) -> None:
        for span in readables(spans):
            processor.on_end(span)

    batcher = SpanBatcher.from_env(sink, os.environ)
    _batchers.clear()  # one provider at a time in practice: keep the last one
    _batchers[id(provider)] = (provider, batcher, tracer)
    return batcher, tracer


_batchers: dict[int, tuple[object, object, Tracer]] = {}


def reset() -> None:
    """Forget this process's configuration (the next `configure` reads the environment again)."""
    _state.clear()


class _Sdk(NamedTuple):
    """What a span needs from the SDK tracer that makes it."""

    processor: Any
    resource: Any
    scope: Any
    ids: Any
    sampler: Any
    always_on: tuple[bool, ...]  # `_always_on_cases` of the sampler


def _sdk(tracer: Tracer) -> _Sdk:
    cached = _sdk_cache.get(id(tracer))
    if cached is not None and cached[0] is tracer:
        return cached[1]
    from opentelemetry.sdk.trace import Tracer as SdkTracer
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    if not isinstance(tracer, SdkTracer):
        raise ConfigError(f"tracing needs the OpenTelemetry SDK's tracer, not {type(tracer).__name__}")
    scope = getattr(tracer, "_instrumentation_scope", None) or InstrumentationScope(INSTRUMENTATION)
    parts = _Sdk(tracer.span_processor, tracer.resource, scope, tracer.id_generator, tracer.sampler,
                 _always_on_cases(tracer.sampler))  # fmt: skip
    _sdk_cache.clear()  # one tracer per process in practice: keep the last one
    _sdk_cache[id(tracer)] = (tracer, parts)
    return parts


_sdk_cache: dict[int, tuple[Tracer, _Sdk]] = {}


def begin(
    tracer: Tracer,
    parent: SpanContext | None,
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> tuple[SpanContext, dict[str, AttributeValue]] | None:
    """The context of a span to be made later with `finished`, under `parent` (None: a new trace) as the
    tracer's sampler decides (None: not sampled), and the attributes the sampler adds."""
    sdk = _sdk(tracer)
    remote = parent is not None and parent.is_valid
    trace_id = parent.trace_id if parent is not None and remote else sdk.ids.generate_trace_id()
    if sdk.always_on[_case(parent if remote else None)]:
        state, added = (parent.trace_state if parent is not None and remote else None), {}
    else:
        context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent and remote else None
        decision = sdk.sampler.should_sample(context, trace_id, name, kind, attributes, ())
        if not decision.decision.is_sampled():
            return None
        state, added = decision.trace_state, dict(decision.attributes or {})
    random = (
        parent.trace_flags.random_trace_id if parent is not None and remote else sdk.ids.is_trace_id_random()
    )
    flags = TraceFlags.SAMPLED | (TraceFlags.RANDOM_TRACE_ID if random else 0)
    own = SpanContext(trace_id, sdk.ids.generate_span_id(), is_remote=False, trace_flags=TraceFlags(flags),
                      trace_state=state)  # fmt: skip
    return own, added


# The ParentBased sampler's delegates, in the order of `_case`: for a root span, a remote parent sampled or
# not, a local parent sampled or not.
_DELEGATES = ("_root", "_remote_parent_sampled", "_remote_parent_not_sampled", "_local_parent_sampled",
              "_local_parent_not_sampled")  # fmt: skip


def _always_on_cases(sampler: Any) -> tuple[bool, ...]:
    """For each case of `_case`, whether the sampler (the default `parentbased_always_on`, or any ParentBased)
    hands it to ALWAYS_ON, which samples the span with its parent's trace state and no attribute: `begin`
    then decides without asking the sampler (its Context, span and result objects: ~2.5 µs a turn). Any
    other sampler, or a ParentBased delegate that is another, is asked."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

    if type(sampler) is not ParentBased:
        return (False,) * len(_DELEGATES)
    return tuple(getattr(sampler, name, None) is ALWAYS_ON for name in _DELEGATES)


def _case(parent: SpanContext | None) -> int:
    if parent is None:
        return 0
    return (1 if parent.is_remote else 3) + (0 if parent.trace_flags.sampled else 1)


def finished(
    tracer: Tracer,
    parent: SpanContext | SpanRecord | None,
    name: str,
    *,
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, AttributeValue] | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    error: str | None = None,
    context: SpanContext | None = None,
    events: Sequence[SpanEvent] = (),
    into: list[Any] | None = None,
) -> SpanRecord | None:
    """A span from `start_ns` to `end_ns`, ended now (None: not sampled). Its `context` is `begin`'s, or
    else a new child of `parent` (a sampled span's context, or a span this made).

    `error` sets `error.type` and an error status; `events` are `event(...)`'s. Attribute values are the
    types OpenTelemetry allows (str, bool, int, float, or a tuple of one of them), not copied or cleaned:
    the caller does not change the mapping afterwards. The span goes into the list `into` as a SpanRecord
    (for `later`), or else to the tracer's span processors as a ReadableSpan."""
    sdk = _sdk(tracer)
    state: TraceState | None
    if context is not None:
        trace_id, span_id, _, flags, state, _ = context  # a SpanContext's fields (its properties read them)
    elif type(parent) is SpanContext or type(parent) is SpanRecord:  # its fields, read as items
        if type(parent) is SpanContext:
            trace_id, _, _, flags, state, valid = parent
        else:  # a span made here (a turn's retrieval)
            trace_id, flags, state, valid = parent[1], parent[3], parent[4], True
        if not valid or not flags & TraceFlags.SAMPLED:
            return None
        span_id = sdk.ids.generate_span_id()
    elif parent is None or not parent.is_valid or not parent.trace_flags.sampled:
        return None
    else:
        trace_id, span_id = parent.trace_id, sdk.ids.generate_span_id()
        flags, state = parent.trace_flags, parent.trace_state
    values = attributes if attributes is not None else _NO_ATTRIBUTES
    code, message = 0, ""
    if error is not None:
        values, code, message = {**values, "error.type": error}, _ERROR, error
    span: SpanRecord = _new_record(SpanRecord, (
        name, trace_id, span_id, flags, state, parent, kind, start_ns, end_ns, values,
        events if type(events) is tuple else tuple(events), code, message, sdk.resource, sdk.scope, 0, 0,
    ))  # fmt: skip
    if into is not None:
        into.append(span)
    else:
        sdk.processor.on_end(readable(span))
    return span


_NO_ATTRIBUTES: Mapping[str, AttributeValue] = MappingProxyType({})
_ERROR = StatusCode.ERROR.value
# SpanRecord's fields as one tuple (a NamedTuple's own constructor is a Python function of 17 arguments)
_new_record = tuple.__new__


def children(
    tracer: Tracer, parent: SpanRecord, spans: Sequence[tuple[str, int, int]], into: list[Any]
) -> None:
    """`finished(tracer, parent, name, start_ns=, end_ns=, into=into)` for each (name, start, end): spans
    with no attribute under a span made here (a retrieval's stages), the parent's fields read once."""
    if not parent[3] & TraceFlags.SAMPLED:
        return
    sdk = _sdk(tracer)
    new_id, resource, scope = sdk.ids.generate_span_id, sdk.resource, sdk.scope
    trace_id, flags, state, internal = parent[1], parent[3], parent[4], SpanKind.INTERNAL
    for name, start_ns, end_ns in spans:
        into.append(_new_record(SpanRecord, (
            name, trace_id, new_id(), flags, state, parent, internal, start_ns, end_ns, _NO_ATTRIBUTES, (), 0,
            "", resource, scope, 0, 0,
        )))  # fmt: skip


def event(tracer: Tracer, name: str, attributes: Mapping[str, AttributeValue], at_ns: int) -> SpanEvent:
    """A span event for `finished(events=...)`."""
    return SpanEvent(name, at_ns, attributes)


def later(make: Callable[[], Sequence[Any]]) -> None:
    """Queue `make` (it returns spans made with `finished(..., into=[])`, from data it owns) for the span
    batcher's thread, which makes them soon, with others, and hands them on (`store.span_batch`)."""
    batcher = _state.get("batcher")
    if batcher is not None:
        batcher.later(make)  # type: ignore[attr-defined]
