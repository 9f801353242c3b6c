"""Issue 14, trace overhead: `store.otlp` writes the OTLP request bytes directly; `store.tracing.finished`
hands finished spans to the SDK's processors. Both are checked against the SDK's own output: the bytes are
parsed with `opentelemetry-proto`'s classes and compared with the SDK encoder's message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags, TraceState

from actors.testing.otlp_receiver import OtlpReceiver
from store import otlp, tracing


def _provider(exporter: InMemorySpanExporter, **kwargs: object) -> TracerProvider:
    provider = TracerProvider(
        resource=Resource({"service.name": "docent", "process.pid": 7, "docent.process": "worker"}),
        **kwargs,  # type: ignore[arg-type]
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


# The web's ask span, as the worker sees it: a remote parent with a trace state.
REMOTE = SpanContext(
    0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED), trace_state=TraceState([("vendor", "v1")]),
)  # fmt: skip


def _varied_spans() -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    tracer = _provider(exporter).get_tracer("docent", "1.2")
    remote = REMOTE
    turn = tracer.start_span(
        "turn", context=trace.set_span_in_context(NonRecordingSpan(remote)), kind=SpanKind.CONSUMER,
        attributes={"docent.turn": 3, "docent.tenant": "é" * 90},
    )  # fmt: skip
    turn.add_event("approval_requested", {"gen_ai.tool.name": "send_email"})
    parent = turn.get_span_context()
    tracing.finished(
        tracer, parent, "chat m", start_ns=1_000, end_ns=2_000_000_000_123, kind=SpanKind.CLIENT,
        attributes={
            "gen_ai.request.model": "m", "gen_ai.usage.input_tokens": 1_234_567, "docent.cost": 0.0125,
            "gen_ai.response.finish_reasons": ("stop", "length"), "docent.flag": True, "docent.neg": -5,
            "docent.empty": "", "docent.long": "x" * 300, "docent.ints": (1, 2, 300), "docent.off": False,
        },
    )  # fmt: skip
    retrieval = tracing.finished(tracer, parent, "retrieval", start_ns=5, end_ns=9)
    assert retrieval is not None
    tracing.finished(tracer, retrieval, "retrieval.embed", start_ns=5, end_ns=6)
    tracing.finished(tracer, parent, "execute_tool t", start_ns=7, end_ns=8, error="smtp_error")
    turn.set_status(trace.Status(StatusCode.ERROR, "went wrong"))
    turn.end()
    root = tracer.start_span("ask", kind=SpanKind.SERVER)  # no parent: a root span
    root.end()
    return list(exporter.get_finished_spans())


def test_the_bytes_parse_to_the_sdk_encoders_message() -> None:
    spans = _varied_spans()
    mine = ExportTraceServiceRequest.FromString(otlp.encode_request(spans))
    assert mine == encode_spans(spans)
    assert len(mine.resource_spans) == 1 and len(mine.resource_spans[0].scope_spans) == 1
    assert len(mine.resource_spans[0].scope_spans[0].spans) == len(spans) == 6


def test_spans_of_two_resources_stay_apart_and_links_fall_back_to_the_sdk_encoder() -> None:
    spans = _varied_spans() + _varied_spans()  # two providers, equal resources: one group
    assert otlp.encode_request(spans) == encode_spans(spans).SerializeToString()
    exporter = InMemorySpanExporter()
    tracer = _provider(exporter).get_tracer("docent")
    other = spans[0].get_span_context()
    assert other is not None
    tracer.start_span("linked", links=[trace.Link(other, {"k": "v"})]).end()
    linked = list(exporter.get_finished_spans())
    assert otlp.encode_request(linked) == encode_spans(linked).SerializeToString()


def test_finished_spans_follow_the_parents_sampling_and_keep_the_sdk_shape() -> None:
    exporter = InMemorySpanExporter()
    tracer = _provider(exporter).get_tracer("docent")
    with tracer.start_as_current_span("turn") as turn:
        context = tracing.finished(tracer, turn.get_span_context(), "step", start_ns=10, end_ns=20,
                                   attributes={"docent.step": 1}, error="llm_timeout")  # fmt: skip
    step = next(s for s in exporter.get_finished_spans() if s.name == "step")
    assert context is not None and (step.context.trace_id, step.context.span_id) == (
        context.trace_id, context.span_id,
    )  # fmt: skip
    assert step.parent is not None and step.parent.span_id == turn.get_span_context().span_id
    assert step.context.trace_id == turn.get_span_context().trace_id
    assert (step.start_time, step.end_time, step.status.status_code) == (10, 20, StatusCode.ERROR)
    assert step.attributes == {"docent.step": 1, "error.type": "llm_timeout"}
    assert step.resource is turn.resource  # type: ignore[attr-defined]
    unsampled = InMemorySpanExporter()
    dropped = _provider(unsampled, sampler=ALWAYS_OFF).get_tracer("docent")
    with dropped.start_as_current_span("turn") as turn:
        assert tracing.finished(dropped, turn.get_span_context(), "step", start_ns=1, end_ns=2) is None
    assert unsampled.get_finished_spans() == ()


def test_a_turns_records_encode_as_the_sdk_encodes_their_readable_spans() -> None:
    """A turn's spans are SpanRecords (`finished(..., into=)`), encoded with no SDK span in between: the
    same bytes as the SDK's encoder writes for the ReadableSpans `readable` makes of them (what an installed
    provider's processors get), a live span of the SDK's in the same batch."""
    exporter = InMemorySpanExporter()
    tracer = _provider(exporter).get_tracer("docent", "1.2")
    remote = REMOTE
    begun = tracing.begin(tracer, remote, "turn", kind=SpanKind.CONSUMER)
    assert begun is not None
    turn, records = begun[0], []
    attributes = {
        "gen_ai.request.model": "m", "gen_ai.usage.input_tokens": 1_234_567, "docent.cost": 0.0125,
        "gen_ai.response.finish_reasons": ("stop", "length"), "docent.flag": True, "docent.one": 1,
        "docent.neg": -5, "docent.empty": "", "docent.long": "x" * 300, "docent.off": False, "docent.f": 1.0,
        "docent.kind": SpanKind.CLIENT, "docent.big": 2**40, "docent.two_bytes": 300, "docent.ints": [1, 2],
    }  # fmt: skip
    for _ in range(2):  # the second time from the encoder's caches
        tracing.finished(tracer, turn, "chat m", start_ns=1_000, end_ns=2_000_000_000_123,
                         kind=SpanKind.CLIENT, attributes=attributes, into=records)  # fmt: skip
    retrieval = tracing.finished(tracer, turn, "retrieval", start_ns=5, end_ns=9, into=records)
    tracing.finished(tracer, retrieval, "retrieval.embed", start_ns=5, end_ns=6, into=records)
    tracing.finished(tracer, turn, "execute_tool t", start_ns=7, end_ns=8, error="smtp_error", into=records)
    asked = tracing.event(tracer, "approval_requested", {"gen_ai.tool.name": "send_email"}, 6)
    tracing.finished(tracer, remote, "turn", start_ns=1, end_ns=10, context=turn, kind=SpanKind.CONSUMER,
                     attributes={"docent.turn": 3, "docent.tenant": "é" * 90}, events=[asked],
                     error="turn_failed", into=records)  # fmt: skip
    tracer.start_span("ask", kind=SpanKind.SERVER).end()  # a live span, ended elsewhere (the web's)
    batch = records + list(exporter.get_finished_spans())
    sdk = encode_spans(tracing.readables(batch))
    assert otlp.encode_request(batch) == sdk.SerializeToString()
    spans = sdk.resource_spans[0].scope_spans[0].spans
    assert [s.name for s in spans] == ["chat m", "chat m", "retrieval", "retrieval.embed", "execute_tool t",
                                       "turn", "ask"]  # fmt: skip
    assert spans[3].parent_span_id == spans[2].span_id and spans[5].parent_span_id == remote.span_id.to_bytes(
        8, "big"
    )


def test_the_batchers_buffer_hands_on_requests_of_bytes_in_arrival_order_per_group() -> None:
    """`Encoded` keeps spans as bytes until a batch is taken: two providers' spans (two resources), taken
    three at a time, are the requests the SDK's encoder writes for the same slices of each group; a value
    the encoder does not write (bytes) is the SDK's, span by span; a zero time is not written (proto3)."""
    tracers = [_provider(InMemorySpanExporter()).get_tracer("docent") for _ in range(2)]
    tracers[1].resource = Resource({"service.name": "other"})  # type: ignore[attr-defined]
    tracing._sdk_cache.clear()
    records: list[tracing.SpanRecord] = []
    for n in range(4):
        for tracer in tracers:
            root = tracer.start_span("turn")
            value: Any = b"raw" if n == 2 else n
            tracing.finished(tracer, root.get_span_context(), f"step {n}", start_ns=n, end_ns=n + 1,
                             attributes={"docent.value": value}, into=records)  # fmt: skip
    buffer = otlp.Encoded()
    buffer.add(records)
    assert len(buffer) == 8
    first = [r for r in records if r.resource is tracers[0].resource]  # type: ignore[attr-defined]
    second = [r for r in records if r.resource is tracers[1].resource]  # type: ignore[attr-defined]
    taken = [buffer.take(3), buffer.take(3), buffer.take(3)]
    assert len(buffer) == 0 and taken[2] != b""
    expected = [first[:3], first[3:] + second[:2], second[2:]]
    for request, spans in zip(taken, expected, strict=True):
        assert request == encode_spans(tracing.readables(spans)).SerializeToString()


def test_a_run_of_one_tracers_records_encodes_as_the_sdk_encodes_it_with_a_value_it_does_not_write() -> None:
    """Records of the group before are encoded without looking their group up again (a turn's spans): the
    same bytes, a bytes value (the SDK encoder's) and floats, long keys and tuples of strings among them."""
    tracer = _provider(InMemorySpanExporter()).get_tracer("docent")
    root = tracer.start_span("turn").get_span_context()
    records: list[tracing.SpanRecord] = []
    for n in range(5):
        value: Any = b"raw" if n == 3 else n
        attributes = {"docent.value": value, "docent.cost": n / 7, "k" * 130: 0.5, "docent.r": ("stop",),
                      "docent.mixed": (True, 1) if n else (1, True), "docent.flag": n == 2}  # fmt: skip
        tracing.finished(tracer, root, f"step {n}", start_ns=n + 1, end_ns=n + 2, attributes=attributes,
                         into=records)  # fmt: skip
    assert otlp.encode_request(records) == encode_spans(tracing.readables(records)).SerializeToString()


def test_children_are_the_spans_finished_makes_under_the_same_record() -> None:
    """`children` (a retrieval's stages) makes the records `finished` makes for the same children, their
    ids aside, and they encode as the SDK encodes them; none under an unsampled parent."""
    tracer = _provider(InMemorySpanExporter()).get_tracer("docent")
    root = tracer.start_span("turn").get_span_context()
    parent = tracing.finished(tracer, root, "retrieval", start_ns=1, end_ns=9, into=[])
    assert parent is not None
    made: list[tracing.SpanRecord] = []
    tracing.children(tracer, parent, [("retrieval.embed", 1, 3), ("retrieval.ann", 4, 9)], made)
    one_by_one: list[tracing.SpanRecord] = []
    for name, start, end in (("retrieval.embed", 1, 3), ("retrieval.ann", 4, 9)):
        tracing.finished(tracer, parent, name, start_ns=start, end_ns=end, into=one_by_one)
    assert [r._replace(span_id=0) for r in made] == [r._replace(span_id=0) for r in one_by_one]
    assert otlp.encode_request(made) == encode_spans(tracing.readables(made)).SerializeToString()
    unsampled = parent._replace(trace_flags=TraceFlags(0))
    none: list[tracing.SpanRecord] = []
    tracing.children(tracer, unsampled, [("retrieval.embed", 1, 3)], none)
    assert none == []


def test_begin_decides_as_the_tracers_sampler_does_with_or_without_asking_it() -> None:
    """`begin` skips asking a ParentBased sampler whose delegate for the parent is ALWAYS_ON (the default's,
    for a root span and a sampled parent): its decision and trace state are the SDK tracer's own."""
    from opentelemetry.sdk.trace.sampling import (
        ALWAYS_ON,
        DEFAULT_ON,
        ParentBased,
        ParentBasedTraceIdRatio,
        TraceIdRatioBased,
    )

    unsampled = SpanContext(REMOTE.trace_id, REMOTE.span_id, is_remote=True, trace_flags=TraceFlags(0),
                            trace_state=REMOTE.trace_state)  # fmt: skip
    local = SpanContext(REMOTE.trace_id, REMOTE.span_id, is_remote=False, trace_flags=REMOTE.trace_flags,
                        trace_state=TraceState([("local", "1")]))  # fmt: skip
    either = ParentBased(ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON)
    samplers = [DEFAULT_ON, ParentBased(ALWAYS_OFF), ParentBasedTraceIdRatio(0.0), ALWAYS_ON, ALWAYS_OFF,
                TraceIdRatioBased(1.0), either]  # fmt: skip
    for sampler in samplers:
        tracer = _provider(InMemorySpanExporter(), sampler=sampler).get_tracer("docent")
        for parent in (None, REMOTE, unsampled, local):
            begun = tracing.begin(tracer, parent, "turn", kind=SpanKind.CONSUMER)
            context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent is not None else None
            sdk = tracer.start_span("turn", context=context, kind=SpanKind.CONSUMER)
            expected = sdk.get_span_context()
            assert (begun is not None) == expected.trace_flags.sampled, (sampler, parent)
            if begun is not None:
                own = begun[0]
                assert own.trace_state == expected.trace_state and own.trace_flags == expected.trace_flags
                assert parent is None or own.trace_id == parent.trace_id


PROXY_ENVS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def test_the_exporter_posts_through_the_sdks_urllib3_transport_unless_requests_would_add_a_proxy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without a proxy (or .netrc entry, or credential provider) for the endpoint the exporter's transport
    is the SDK's urllib3 one, and its posts reach a real OTLP receiver (gzip too, the SDK's client
    compressing); with a proxy configured it keeps the SDK's default, requests, which honours it."""
    from opentelemetry.exporter.http.transport._requests import RequestsHTTPTransport
    from opentelemetry.exporter.http.transport._urllib3 import Urllib3HTTPTransport

    for name in PROXY_ENVS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # none
    tracer = _provider(InMemorySpanExporter()).get_tracer("docent")
    root = tracer.start_span("turn").get_span_context()
    with OtlpReceiver() as receiver:
        for compression in ("none", "gzip"):
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", compression)
            exporter = otlp.SpanExporter(endpoint=f"{receiver.endpoint}/v1/traces")
            assert type(exporter._client._transport) is Urllib3HTTPTransport
            records: list[tracing.SpanRecord] = []
            tracing.finished(tracer, root, f"step {compression}", start_ns=1, end_ns=2, into=records)
            assert exporter.post(otlp.encode_request(records)) is SpanExportResult.SUCCESS
            exporter.shutdown()
        received = receiver.wait_for(lambda spans: len(spans) == 2)
        assert sorted(s.name for s in received) == ["step gzip", "step none"]
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    proxied = otlp.SpanExporter(endpoint="http://collector.invalid:4318/v1/traces")
    assert type(proxied._client._transport) is RequestsHTTPTransport
    proxied.shutdown()
