"""OTLP/protobuf encoding of finished spans, written straight to the wire format, and the exporter using it.

    encode_request(spans) -> bytes      an `ExportTraceServiceRequest`, byte-compatible with the SDK's
                                        `encode_spans(spans).SerializeToString()` (what a collector parses)
    SpanExporter(...)                   the SDK's OTLP/HTTP exporter (same environment, transport, retries),
                                        encoding with `encode_request`

The SDK's encoder builds a protobuf object per span, attribute and value before serialising them: about
three times the CPU of appending the bytes directly (bench/observability.py measures the whole turn), and
it runs in the worker process beside the turns. Field numbers are those of `opentelemetry/proto/trace/v1/
trace.proto` and `common/v1/common.proto`; a span with links, or an attribute value of another type, is
left to the SDK's encoder (the whole batch), so the output is always a valid request. The tests decode
both encodings with `opentelemetry-proto`'s classes and compare them.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

log = logging.getLogger(__name__)

_SMALL = [bytes([n]) for n in range(128)]
_DOUBLE = struct.Struct("<d")
_FIXED64 = struct.Struct("<Q")
_FIXED32 = struct.Struct("<I")
# Span.flags: SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK, and SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK (as the SDK's)
HAS_IS_REMOTE = 0x100
IS_REMOTE = 0x200


class Unencodable(Exception):
    """A span this encoder does not write (links, an unknown value type): the SDK's encoder does."""


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64: two's complement in ten bytes
    if n < 128:
        return _SMALL[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes, message)."""
    size = len(payload)
    return tag + (_SMALL[size] if size < 128 else _varint(size)) + payload


def _any_value(value: object) -> bytes:
    """An AnyValue: string 1, bool 2, int 3, double 4, array 5 (of AnyValue, field 1)."""
    if isinstance(value, str):
        return _field(b"\x0a", value.encode())
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, list | tuple):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(v)) for v in value))
    raise Unencodable(type(value).__name__)


_KEYS: dict[str, bytes] = {}


def _key(name: str) -> bytes:
    found = _KEYS.get(name)
    if found is None:
        found = _KEYS[name] = _field(b"\x0a", name.encode())
    return found


def _attributes(tag: bytes, attributes: Mapping[str, object] | None) -> bytes:
    """Repeated KeyValue (key 1, value 2) under `tag`. A string-valued pair seen before is its cached bytes
    (most repeat: operation, model, tool, route, stage, tenant); the cache is emptied past MAX_CACHED_PAIRS.
    Only strings: True == 1 == 1.0 as dict keys, but each has its own encoding."""
    if not attributes:
        return b""
    cache = _PAIRS.get(tag)
    if cache is None:
        cache = _PAIRS[tag] = {}
    out = []
    for key, value in attributes.items():
        if type(value) is str:
            found = cache.get((key, value))
            if found is None:
                if len(cache) >= MAX_CACHED_PAIRS:
                    cache.clear()
                found = cache[(key, value)] = _field(tag, _key(key) + _field(b"\x12", _any_value(value)))
            out.append(found)
        else:
            out.append(_field(tag, _key(key) + _field(b"\x12", _any_value(value))))
    return b"".join(out)


MAX_CACHED_PAIRS = 4096
_PAIRS: dict[bytes, dict[tuple[str, str], bytes]] = {}


def _span_id(tag: bytes, span_id: int) -> bytes:
    return tag + b"\x08" + span_id.to_bytes(8, "big")


def _events(span: ReadableSpan) -> bytes:
    """Span.events (11): Event{time_unix_nano 1 fixed64, name 2, attributes 3}."""
    out = []
    for event in span._events:
        body = b"\x09" + _FIXED64.pack(event.timestamp) + _field(b"\x12", event.name.encode())
        out.append(_field(b"\x5a", body + _attributes(b"\x1a", event.attributes)))
    return b"".join(out)


def _status(span: ReadableSpan) -> bytes:
    """Span.status (15): Status{message 2, code 3}."""
    status = span.status
    if status.status_code.value == 0 and not status.description:
        return b"\x7a\x00"  # unset: an empty Status, as the SDK writes it
    body = _field(b"\x12", status.description.encode()) if status.description else b""
    code = status.status_code.value
    return _field(b"\x7a", body + (b"\x18" + _SMALL[code] if code else b""))


def encode_span(span: ReadableSpan) -> bytes:
    """One Span message's bytes (not framed). Reads the span's fields, not its properties (they copy the
    attributes, events and links on every call: a third of the encoding)."""
    context, links, start, end = span._context, span._links, span._start_time, span._end_time
    if context is None or links or start is None or end is None:
        raise Unencodable("a span without a context or times, or with links")
    parent, attributes, events = span._parent, span._attributes, span._events
    parts = [b"\x0a\x10" + context.trace_id.to_bytes(16, "big"), _span_id(b"\x12", context.span_id)]
    if context.trace_state:
        parts.append(_field(b"\x1a", context.trace_state.to_header().encode()))
    if parent is not None:
        parts.append(_span_id(b"\x22", parent.span_id))
    name = _NAMES.get(span._name)
    if name is None:
        if len(_NAMES) >= MAX_CACHED_PAIRS:
            _NAMES.clear()
        name = _NAMES[span._name] = _field(b"\x2a", span._name.encode())
    parts += (
        name,
        b"\x30" + _SMALL[span._kind.value + 1],  # the proto's SpanKind is the API's plus one (0: unspecified)
        b"\x39" + _FIXED64.pack(start),
        b"\x41" + _FIXED64.pack(end),
        _attributes(b"\x4a", attributes),
    )
    if type(attributes) is not MappingProxyType and span.dropped_attributes:  # a live span's bounded ones
        parts.append(b"\x50" + _varint(span.dropped_attributes))
    if events:
        parts.append(_events(span))
        if span.dropped_events:
            parts.append(b"\x60" + _varint(span.dropped_events))
    parts.append(_status(span))
    flags = HAS_IS_REMOTE | (IS_REMOTE if parent is not None and parent.is_remote else 0)
    parts.append(b"\x85\x01" + _FIXED32.pack(flags))  # field 16, fixed32
    return b"".join(parts)


_NAMES: dict[str, bytes] = {}  # span name -> its field's bytes


def _resource(span: ReadableSpan) -> bytes:
    """Resource{attributes 1, dropped_attributes_count 2}."""
    return _attributes(b"\x0a", span.resource.attributes)


def _scope(span: ReadableSpan) -> bytes:
    """InstrumentationScope{name 1, version 2, attributes 3}."""
    scope = span.instrumentation_scope
    if scope is None:
        return b""
    body = _field(b"\x0a", scope.name.encode()) if scope.name else b""
    if scope.version:
        body += _field(b"\x12", scope.version.encode())
    return body + _attributes(b"\x1a", scope.attributes)


def _same(found: dict[int, Any], value: Any) -> Any:
    """The first value equal to `value` seen in this batch (equal resources or scopes share a group, as
    in the SDK's encoder), found by identity first: one provider's spans share their resource object."""
    known = found.get(id(value))
    if known is None:
        known = found[id(value)] = next((v for v in found.values() if v == value), value)
    return known


def encode_request(spans: Sequence[ReadableSpan]) -> bytes:
    """ExportTraceServiceRequest{resource_spans 1: ResourceSpans{resource 1, scope_spans 2: ScopeSpans{
    scope 1, spans 2, schema_url 3}, schema_url 3}}, grouped by resource, then scope, in arrival order."""
    groups: dict[int, tuple[ReadableSpan, dict[int, tuple[ReadableSpan, list[bytes]]]]] = {}
    resources: dict[int, Any] = {}
    scopes_seen: dict[int, Any] = {}
    for span in spans:
        resource = _same(resources, span.resource)
        scope = _same(scopes_seen, span.instrumentation_scope) if span.instrumentation_scope else None
        _, scopes = groups.setdefault(id(resource), (span, {}))
        scopes.setdefault(id(scope), (span, []))[1].append(encode_span(span))
    out = []
    for first, scopes in groups.values():
        body = _field(b"\x0a", _resource(first))
        for scoped, encoded in scopes.values():
            scope = scoped.instrumentation_scope
            inner = _field(b"\x0a", _scope(scoped))
            inner += b"".join(_field(b"\x12", e) for e in encoded)
            if scope is not None and scope.schema_url:
                inner += _field(b"\x1a", scope.schema_url.encode())
            body += _field(b"\x12", inner)
        if first.resource.schema_url:
            body += _field(b"\x1a", first.resource.schema_url.encode())
        out.append(_field(b"\x0a", body))
    return b"".join(out)


def encoded(spans: Sequence[ReadableSpan]) -> bytes:
    """`encode_request`, or the SDK's encoding for a batch it does not write."""
    try:
        return encode_request(spans)
    except Unencodable:
        return encode_spans(spans).SerializePartialToString()


class SpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter with `encoded` bodies; its own `export` where its internals differ
    from the version this was written against (opentelemetry-exporter-otlp-proto-http 1.45)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        client: Any = getattr(self, "_client", None)
        if self._shutdown or not hasattr(client, "export"):
            return super().export(spans)
        body = encoded(spans)
        limit = getattr(self, "_max_request_size", 0)
        if limit and len(body) > limit:
            log.warning(
                "dropping a batch of %d spans: %d bytes > max_request_size %d", len(spans), len(body), limit
            )
            return SpanExportResult.FAILURE
        result = client.export(body)  # the transport logs a failure (and retries a transient one)
        return SpanExportResult.SUCCESS if getattr(result, "success", False) else SpanExportResult.FAILURE
