"""A finished span's data (`SpanRecord`), as `store.tracing.finished` makes it, and its SDK form.

    SpanRecord(...)               a span's fields: what `store.otlp` encodes, with no SDK object in between
    SpanEvent(name, timestamp, attributes)  a span event (the SDK Event's fields)
    readable(record) -> ReadableSpan        the SDK's span, for span processors other than the batcher's
    readables(spans)                        the same for a batch of records and SDK spans

Its own module so that `store.tracing` (which makes records and sets up the exporter) and `store.otlp`
(which encodes them) both depend on it, not on each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.util.types import AttributeValue


class SpanEvent(NamedTuple):
    """A span event (`event(...)`): the fields of the SDK's Event that the encoder reads."""

    name: str
    timestamp: int
    attributes: Mapping[str, AttributeValue]


class SpanRecord(NamedTuple):
    """A finished span's data as `finished` makes it: what `store.otlp` encodes, with no SDK object in
    between, and what `readable` turns into the SDK's ReadableSpan for other span processors (an installed
    provider's). It is also a parent for `finished` (its trace and span ids, flags and state)."""

    name: str
    trace_id: int
    span_id: int
    trace_flags: TraceFlags
    trace_state: TraceState | None
    parent: SpanContext | SpanRecord | None
    kind: SpanKind
    start_ns: int
    end_ns: int
    attributes: Mapping[str, AttributeValue]
    events: Sequence[Any]  # SpanEvent's, or the SDK's Event's (the same fields)
    status_code: int  # StatusCode's value: 0 unset, 1 ok, 2 error
    status_message: str
    resource: Any  # opentelemetry.sdk.resources.Resource
    scope: Any  # opentelemetry.sdk.util.instrumentation.InstrumentationScope
    dropped_attributes: int = 0
    dropped_events: int = 0

    @property
    def is_valid(self) -> bool:
        return True

    @property
    def is_remote(self) -> bool:
        return False


def _context(span: SpanContext | SpanRecord) -> SpanContext:
    if isinstance(span, SpanContext):
        return span
    return SpanContext(span.trace_id, span.span_id, is_remote=False, trace_flags=span.trace_flags,
                       trace_state=span.trace_state)  # fmt: skip


def readable(span: SpanRecord) -> Any:
    """The SDK's ReadableSpan of a SpanRecord (for span processors other than `store.span_batch`'s)."""
    from opentelemetry.sdk.trace import Event, ReadableSpan

    status = Status(StatusCode(span.status_code), span.status_message or None)
    events = tuple(
        Event(e.name, attributes=MappingProxyType(dict(e.attributes)), timestamp=e.timestamp)
        for e in span.events
    )
    return ReadableSpan(
        span.name, context=_context(span), parent=None if span.parent is None else _context(span.parent),
        resource=span.resource, attributes=MappingProxyType(dict(span.attributes)), events=events,
        kind=span.kind, status=status, start_time=span.start_ns, end_time=span.end_ns,
        instrumentation_scope=span.scope,
    )  # fmt: skip


def readables(spans: Sequence[Any]) -> list[Any]:
    """The SDK's spans of a batch of SpanRecords and ReadableSpans (the SDK's encoder, other processors)."""
    return [readable(s) if isinstance(s, SpanRecord) else s for s in spans]
