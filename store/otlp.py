"""OTLP/protobuf encoding of finished spans, written straight to the wire format, and the exporter using it.

    encode_request(spans) -> bytes      an `ExportTraceServiceRequest` of `store.tracing.SpanRecord`s (a
                                        turn's spans) and SDK `ReadableSpan`s (spans ended elsewhere),
                                        byte-identical to the SDK's `encode_spans(...).SerializeToString()`
                                        of the same spans (what a collector parses)
    SpanExporter(...)                   the SDK's OTLP/HTTP exporter (same environment, transport, retries),
                                        encoding with `encode_request`

The SDK's encoder builds a protobuf object per span, attribute and value before serialising them, from the
SDK's span objects: a turn's spans are never made as those (`store.tracing.finished` makes records), and
their bytes are appended directly from the records' fields (bench/observability.py measures the whole
turn), in the worker process beside the turns. Field numbers are those of `opentelemetry/proto/trace/v1/
trace.proto` and `common/v1/common.proto`; a span with links, or an attribute value of another type, is
left to the SDK's encoder (the whole batch), so the output is always a valid request. The tests compare
both encodings' bytes, and decode them with `opentelemetry-proto`'s classes.
"""

from __future__ import annotations

import logging
import os
import struct
from collections import deque
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

import requests
import requests.utils
from opentelemetry.exporter.http.transport._urllib3 import Urllib3HTTPTransport
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanKind
from opentelemetry.trace.span import DEFAULT_TRACE_STATE
from requests import certs

from store.span_record import SpanEvent, SpanRecord, readables

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
    if 0 <= n < 128:
        return _SMALL[n]
    if 0 < n < 16384:  # two bytes: a span's length, most token counts
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    if n < 0:
        n += 1 << 64  # int64: two's complement in ten bytes
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


def _string(tag: bytes, value: str) -> bytes:
    """A string field outside a oneof: an empty one is not written (proto3's default, as the SDK's)."""
    return _field(tag, value.encode()) if value else b""


def _fixed64(tag: bytes, value: int) -> bytes:
    return tag + _FIXED64.pack(value) if value else b""


def _times(start: int, end: int) -> bytes:
    if start and end:
        return _TIMES.pack(0x39, start, 0x41, end)
    return _fixed64(b"\x39", start) + _fixed64(b"\x41", end)


def _any_value(value: Any) -> bytes:
    """An AnyValue: string 1, bool 2, int 3, double 4, array 5 (of AnyValue, field 1). By exact type first
    (isinstance down a chain of types costs more than the encoding); a subclass (an IntEnum) as its base."""
    kind = type(value)
    if kind is str:
        return _field(b"\x0a", value.encode())
    if kind is int:
        return b"\x18" + _varint(value)
    if kind is float:
        return b"\x21" + _DOUBLE.pack(value)
    if kind is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if kind is tuple or kind is list:
        return _field(b"\x2a", b"".join([_field(b"\x0a", _any_value(v)) for v in value]))
    return _any_value_of_subclass(value)


def _any_value_of_subclass(value: Any) -> bytes:
    if isinstance(value, bool):
        return _any_value(bool(value))
    bases: tuple[Any, ...] = (str, int, float, tuple, list)
    for base in bases:
        if isinstance(value, base):
            return _any_value(base(value))
    raise Unencodable(type(value).__name__)


_KEYS: dict[str, bytes] = {}


def _key(name: str) -> bytes:
    found = _KEYS.get(name)
    if found is None:
        found = _KEYS[name] = _string(b"\x0a", name)
    return found


def _attributes(tag: bytes, attributes: Mapping[str, object] | None) -> bytes:
    """Repeated KeyValue (key 1, value 2) under `tag`. A pair seen before whose value is a string, an int
    or a tuple of strings is its cached bytes (most repeat: operation, model, tool, route, stage, tenant,
    step, finish reasons), one cache per value type: True == 1 == 1.0 as dict keys, but each has its own
    encoding (a bool or float pair is never cached, so never found as an int's). A cache is emptied past
    MAX_CACHED_PAIRS. A float (a cost, a latency: seldom the same twice) is written at once.
    """
    if not attributes:
        return b""
    caches = _PAIRS.get(tag)
    if caches is None:
        caches = _PAIRS[tag] = {str: {}, int: {}, tuple: {}}
    out = []
    for pair in attributes.items():
        value = pair[1]
        kind = type(value)
        cache = caches.get(kind)
        if cache is not None and (kind is not tuple or _all_strings(value)):  # type: ignore[arg-type]
            found = cache.get(pair)
            if found is None:
                if len(cache) >= MAX_CACHED_PAIRS:
                    cache.clear()
                found = cache[pair] = _pair(tag, *pair)
            out.append(found)
        elif kind is float:
            key = _key(pair[0])
            size = len(key) + 11  # the key, then the value: a field (2 bytes) of an AnyValue's double (9)
            body = key + b"\x12\x09\x21" + _DOUBLE.pack(value)  # type: ignore[arg-type]
            out.append(tag + (_SMALL[size] if size < 128 else _varint(size)) + body)
        else:
            out.append(_pair(tag, *pair))
    return b"".join(out)


def _all_strings(values: tuple[object, ...]) -> bool:
    for value in values:  # noqa: SIM110 (a loop: `all` of a generator costs its frame, ~1 µs a tuple)
        if type(value) is not str:
            return False
    return True


def _pair(tag: bytes, key: str, value: object) -> bytes:
    return _field(tag, _key(key) + _field(b"\x12", _any_value(value)))


MAX_CACHED_PAIRS = 4096
_PAIRS: dict[bytes, dict[type, dict[tuple[str, object], bytes]]] = {}


def _events(events: Sequence[SpanEvent]) -> bytes:
    """Span.events (11): Event{time_unix_nano 1 fixed64, name 2, attributes 3}."""
    out = []
    for event in events:
        body = _fixed64(b"\x09", event.timestamp) + _string(b"\x12", event.name)
        out.append(_field(b"\x5a", body + _attributes(b"\x1a", event.attributes)))
    return b"".join(out)


def _status(code: int, message: str) -> bytes:
    """Span.status (15): Status{message 2, code 3}; unset and empty is an empty Status, as the SDK writes."""
    found = _STATUSES.get((code, message))
    if found is None:
        body = _field(b"\x12", message.encode()) if message else b""
        found = _field(b"\x7a", body + (b"\x18" + _SMALL[code] if code else b""))
        if len(_STATUSES) < MAX_CACHED_PAIRS:
            _STATUSES[(code, message)] = found
    return found


_STATUSES: dict[tuple[int, str], bytes] = {}
# Span.flags (16, fixed32): SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK, with IS_REMOTE for a remote parent
_LOCAL_FLAGS = b"\x85\x01" + _FIXED32.pack(HAS_IS_REMOTE)
_REMOTE_FLAGS = b"\x85\x01" + _FIXED32.pack(HAS_IS_REMOTE | IS_REMOTE)
_TIMES = struct.Struct("<BQBQ")  # start_time_unix_nano (7, fixed64: tag 0x39), end (8: 0x41)
# Span.kind (6): the proto's SpanKind is the API's plus one (0: unspecified); by the API's value (a SpanKind's
# hash is computed in Python)
_KINDS = {kind.value: b"\x30" + _SMALL[kind.value + 1] for kind in SpanKind}
_NAMES: dict[str, bytes] = {}  # span name -> its field's bytes


def record_of(span: ReadableSpan) -> SpanRecord:
    """A ReadableSpan's fields (not its properties: they copy the attributes, events and links on every
    call) as the SpanRecord the encoder writes: spans ended elsewhere (the web's live `ask`)."""
    context, start, end = span._context, span._start_time, span._end_time
    if context is None or span._links or start is None or end is None:
        raise Unencodable("a span without a context or times, or with links")
    attributes, status = span._attributes, span.status
    dropped = span.dropped_attributes if type(attributes) is not MappingProxyType else 0  # a live span's
    return SpanRecord(
        span._name, context.trace_id, context.span_id, context.trace_flags, context.trace_state, span._parent,
        span._kind, start, end, attributes or {}, span._events, status.status_code.value,
        status.description or "", span.resource, span.instrumentation_scope, dropped,
        span.dropped_events if span._events else 0,
    )  # fmt: skip


def encode_span(span: SpanRecord) -> bytes:
    """One Span message's bytes (not framed). The record's fields are unpacked in one go (a NamedTuple's
    field read is a descriptor call each), and the parts added as they come."""
    (name, trace_id, span_id, _, state, parent, kind, start, end, attributes, events, code, message, _, _,
     dropped_attributes, dropped_events) = span  # fmt: skip
    last = _LAST[0]  # (trace id, its bytes, parent, its bytes): replaced whole, never changed
    if trace_id is not last[0]:  # a turn's spans share their trace id (the same int): its bytes once
        last = (trace_id, b"\x0a\x10" + trace_id.to_bytes(16, "big") + b"\x12\x08", None, b"")
    out = last[1] + span_id.to_bytes(8, "big")
    if state is not None and state is not DEFAULT_TRACE_STATE and state:  # (its len() is Python's)
        out += _field(b"\x1a", state.to_header().encode())
    if parent is not None:
        if parent is not last[2]:  # a retrieval's stages share theirs
            last = (last[0], last[1], parent, b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
        out += last[3]
    _LAST[0] = last
    named = _NAMES.get(name)
    if named is None:
        if len(_NAMES) >= MAX_CACHED_PAIRS:
            _NAMES.clear()
        named = _NAMES[name] = _string(b"\x2a", name)
    times = _TIMES.pack(0x39, start, 0x41, end) if start and end else _times(start, end)
    out += named + _KINDS[kind._value_] + times
    if attributes:
        out += _attributes(b"\x4a", attributes)
    if dropped_attributes:
        out += b"\x50" + _varint(dropped_attributes)
    if events:
        out += _events(events)
        if dropped_events:
            out += b"\x60" + _varint(dropped_events)
    status = _UNSET if not code and not message else _STATUSES.get((code, message)) or _status(code, message)
    # a SpanContext's is_remote is its third item (the property reads it); a SpanRecord parent is local
    remote = parent is not None and type(parent) is not SpanRecord and parent[2] is True
    return out + status + (_REMOTE_FLAGS if remote else _LOCAL_FLAGS)


# The last span's trace id with its bytes (the Span message's first fields' start) and its parent with its
# field's bytes, as one tuple replaced whole (another thread's `encode_request` may encode at the same time:
# it reads one tuple or another, never half of each). A parent kept here is let go by the next one.
_LAST: list[tuple[Any, bytes, Any, bytes]] = [(None, b"", None, b"")]
_UNSET = b"\x7a\x00"  # Span.status (15): an empty Status, as the SDK writes an unset one


def _resource(resource: Any) -> bytes:
    """Resource{attributes 1, dropped_attributes_count 2}."""
    return _attributes(b"\x0a", resource.attributes)


def _scope(scope: Any) -> bytes:
    """InstrumentationScope{name 1, version 2, attributes 3}."""
    if scope is None:
        return b""
    body = _field(b"\x0a", scope.name.encode()) if scope.name else b""
    if scope.version:
        body += _field(b"\x12", scope.version.encode())
    return body + _attributes(b"\x1a", scope.attributes)


def _encode_one(item: SpanRecord | ReadableSpan) -> tuple[Any, Any, bytes]:
    """A span's resource, scope and Span message bytes; a span this does not write is the SDK encoder's."""
    try:
        if type(item) is SpanRecord:
            return item[13], item[14], encode_span(item)  # its resource and scope
        span = record_of(item)  # type: ignore[arg-type]
        return span.resource, span.scope, encode_span(span)
    except Unencodable:
        sdk = readables([item])[0]
        message = encode_spans([sdk]).resource_spans[0].scope_spans[0].spans[0]
        return sdk.resource, sdk.instrumentation_scope, message.SerializeToString()


class _Group(NamedTuple):
    resource: Any
    scope: Any
    spans: deque[bytes]  # framed: ScopeSpans.spans (2)


class Encoded:
    """Spans encoded as they arrive and kept as bytes until they are sent (nothing the garbage collector
    traces while they wait: a 2048-span batch of span objects used to outlive collections and bring full
    ones sooner), grouped by resource, then scope, as the SDK's encoder groups them (equal ones share a
    group; one provider's spans share their objects, found by identity first).

        buffer.add(spans)        SpanRecords and ReadableSpans
        len(buffer)              spans waiting
        buffer.take(n) -> bytes  the ExportTraceServiceRequest of the first n, in arrival order per group
    """

    def __init__(self) -> None:
        self._groups: list[_Group] = []  # in order of first arrival
        self._last: _Group | None = None
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, spans: Sequence[SpanRecord | ReadableSpan]) -> None:
        group = self._last
        for item in spans:
            if (  # a record of the group before (a turn's spans share their resource and scope): at once
                group is not None
                and type(item) is SpanRecord
                and item[13] is group.resource
                and item[14] is group.scope
            ):
                try:
                    body = encode_span(item)
                except Unencodable:
                    body = _encode_one(item)[2]
            else:
                resource, scope, body = _encode_one(item)
                if group is None or group.resource is not resource or group.scope is not scope:
                    group = self._group(resource, scope)
            size = len(body)
            group.spans.append(b"\x12" + (_SMALL[size] if size < 128 else _varint(size)) + body)
        self._count += len(spans)

    def _group(self, resource: Any, scope: Any) -> _Group:
        found = next(
            (g for g in self._groups if _equal(g.resource, resource) and _equal(g.scope, scope)), None
        )
        if found is None:
            found = _Group(resource, scope, deque())
            self._groups.append(found)
        self._last = found
        return found

    def take(self, limit: int) -> bytes:
        """ExportTraceServiceRequest{resource_spans 1: ResourceSpans{resource 1, scope_spans 2: ScopeSpans{
        scope 1, spans 2, schema_url 3}, schema_url 3}}."""
        left = min(limit, self._count)
        self._count -= left
        by_resource: list[tuple[Any, list[bytes]]] = []
        for group in self._groups:
            count = min(left, len(group.spans))
            if not count:
                continue
            left -= count
            inner = _field(b"\x0a", _scope(group.scope))
            if count == len(group.spans):  # the whole group (a full batch is most often one): at once
                inner += b"".join(group.spans)
                group.spans.clear()
            else:
                inner += b"".join([group.spans.popleft() for _ in range(count)])
            if group.scope is not None and group.scope.schema_url:
                inner += _field(b"\x1a", group.scope.schema_url.encode())
            scopes = next((s for r, s in by_resource if _equal(r, group.resource)), None)
            if scopes is None:
                by_resource.append((group.resource, scopes := []))
            scopes.append(_field(b"\x12", inner))
        self._groups = [g for g in self._groups if g.spans]
        self._last = None
        out = []
        for resource, scopes in by_resource:
            body = _field(b"\x0a", _resource(resource)) + b"".join(scopes)
            if resource.schema_url:
                body += _field(b"\x1a", resource.schema_url.encode())
            out.append(_field(b"\x0a", body))
        return b"".join(out)


def _equal(a: object, b: object) -> bool:
    return a is b or a == b


def encode_request(spans: Sequence[SpanRecord | ReadableSpan]) -> bytes:
    """The ExportTraceServiceRequest of these spans (`Encoded`)."""
    buffer = Encoded()
    buffer.add(spans)
    return buffer.take(len(buffer))


class SpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter: `post` sends a request `Encoded` made, `export` encodes spans
    with `encode_request`; the SDK's own `export` where its internals differ from the version this was
    written against (opentelemetry-exporter-otlp-proto-http 1.45: `posts_bytes()` is False).

    Its transport is the SDK's urllib3 one (`opentelemetry-exporter-http-transport`, the same retries,
    headers, compression and certificates: the SDK's client drives it) where the default, requests, would
    add nothing: no proxy, .netrc entry or credential provider for the endpoint. A 2048-span POST cost
    ~1.3 ms of CPU through requests (it reads the proxy environment on every request), ~0.8 ms through
    urllib3 (README "Traces")."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not args and not {"session", "_transport"} & kwargs.keys():
            _lighter_transport(self)

    def posts_bytes(self) -> bool:
        return hasattr(getattr(self, "_client", None), "export")

    def export(self, spans: Sequence[SpanRecord | ReadableSpan]) -> SpanExportResult:
        if self._shutdown or not self.posts_bytes():
            return super().export(readables(spans))
        return self.post(encode_request(spans))

    def post(self, body: bytes) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        limit = getattr(self, "_max_request_size", 0)
        if limit and len(body) > limit:
            log.warning("dropping a batch of spans: %d bytes > max_request_size %d", len(body), limit)
            return SpanExportResult.FAILURE
        result = self._client.export(body)  # the transport logs a failure (and retries a transient one)
        return SpanExportResult.SUCCESS if getattr(result, "success", False) else SpanExportResult.FAILURE


def _lighter_transport(exporter: OTLPSpanExporter) -> None:
    """The SDK's urllib3 transport in place of its requests one, when requests would add nothing to it."""
    client = getattr(exporter, "_client", None)
    current = getattr(client, "_transport", None)
    session = getattr(current, "_session", None)
    if type(session) is not requests.Session or session.auth is not None or session.cert is not None:
        return
    if any(name.endswith("CREDENTIAL_PROVIDER") and name.startswith(_CREDENTIALS) for name in os.environ):
        return
    endpoint = exporter._endpoint
    if requests.utils.get_environ_proxies(endpoint) or requests.utils.get_netrc_auth(endpoint):
        return
    verify: bool | str = session.verify if session.verify is not None else True
    if verify is True:  # as requests: its environment's CA bundle, else certifi's
        verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certs.where()
    client._transport = Urllib3HTTPTransport(verify=verify)  # type: ignore[union-attr]
    current.close()  # type: ignore[union-attr]


_CREDENTIALS = "OTEL_PYTHON_EXPORTER_OTLP_"
