"""Issue 14, Traces: OpenTelemetry spans of a turn, exported over OTLP/HTTP.

Once over a real `docent run` stack (web, worker and ingest processes, embedded Redis, the scripted
OpenAI-compatible LLM) exporting to a real OTLP receiver the test starts, which decodes each
`ExportTraceServiceRequest` with `opentelemetry-proto`'s own classes: the web's `ask` span is the parent
of the worker's `turn` span across the dramatiq message. The span shapes of an agent turn (tool calls,
approvals, failures) with the SDK's in-memory exporter.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from websockets.asyncio.client import connect

from actors.state import ConversationState, fold
from actors.testing import ScriptedLLMThread
from actors.testing.otlp_receiver import OtlpReceiver, ReceivedSpan
from actors.turn_trace import TurnTrace
from server.auth import mint_token
from store import span_batch, tracing
from store.events import (
    AnswerCompleted,
    ApprovalDecided,
    ApprovalRequested,
    Event,
    LLMCompleted,
    LLMFailed,
    LLMRequested,
    ToolCall,
    ToolIntent,
    ToolResult,
    TurnStarted,
    UserMessage,
)
from store.exceptions import ConfigError
from store.settings import Settings
from store.span_batch import SpanBatcher
from tests.stack_proc import Stack
from tests.test_metrics import POLICY, TENANT, _index

QUESTION = "where do flight receipts go?"


async def _ask(stack: Stack, settings: Settings) -> str:
    token = mint_token(settings, tenant=TENANT, user="alice")
    async with connect(f"{stack.ws_url}?token={token}", open_timeout=10) as ws:
        await ws.send(json.dumps({"type": "hello"}))
        ready = json.loads(await asyncio.wait_for(ws.recv(), 10))
        await ws.send(json.dumps({"type": "ask", "text": QUESTION, "mode": "qa", "client_message_id": "m1"}))
        while True:
            frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 60))
            if frame.get("type") == "event" and frame["event"]["type"] in {"answer_completed", "turn_failed"}:
                assert frame["event"]["type"] == "answer_completed", frame
                return str(ready["conversation_id"])


def _complete(spans: list[ReceivedSpan]) -> bool:
    names = {s.name for s in spans}
    return {"ask", "turn", "retrieval"} <= names and any(n.startswith("chat ") for n in names)


def test_a_real_stack_exports_one_trace_from_the_web_ask_to_the_worker_turn(
    tmp_path: Path, stacks: list[Stack]
) -> None:
    data_dir = tmp_path / "stack"
    _index(data_dir)
    with OtlpReceiver() as receiver, ScriptedLLMThread() as llm:
        stack = Stack(data_dir, llm_backend="openai", llm_url=llm.url, llm_max_retries="0")
        stack.env.update(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_SERVICE_NAME": "docent-test",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
            }
        )  # fmt: skip
        stacks.append(stack.start())
        conversation = asyncio.run(_ask(stack, Settings.from_env({"DOCENT_DATA_DIR": str(data_dir)})))
        spans = receiver.wait_for(_complete)
    by_name = {s.name: s for s in spans}
    assert _complete(spans), sorted(by_name)
    ask, turn, retrieval = by_name["ask"], by_name["turn"], by_name["retrieval"]
    (chat,) = [s for s in spans if s.name.startswith("chat ")]
    # one trace; the web's ask is the parent of the worker's turn, across the dramatiq message
    assert ask.parent_span_id == "" and ask.kind == 4  # PRODUCER
    assert turn.trace_id == ask.trace_id and turn.parent_span_id == ask.span_id and turn.kind == 5  # CONSUMER
    assert ask.resource["docent.process"] == "web" and turn.resource["docent.process"] == "worker"
    assert ask.resource["process.pid"] != turn.resource["process.pid"]
    assert {s.resource["service.name"] for s in spans} == {"docent-test"}
    assert (
        turn.attributes["docent.conversation.id"] == conversation == ask.attributes["docent.conversation.id"]
    )
    assert turn.attributes["docent.route"] == "qa" and turn.attributes["docent.turn"] == 1
    assert turn.attributes["docent.turn.outcome"] == "answer_completed"
    # the steps under the turn: retrieval (stages under it) and the LLM call with GenAI attributes
    assert retrieval.parent_span_id == turn.span_id and chat.parent_span_id == turn.span_id
    stages = {s.name for s in spans if s.parent_span_id == retrieval.span_id}
    assert {
        "retrieval.embed",
        "retrieval.ann",
        "retrieval.bm25",
        "retrieval.fuse",
        "retrieval.catalog",
    } <= stages
    staged = {s.name: s for s in spans if s.parent_span_id == retrieval.span_id}
    embed, ann, bm25 = staged["retrieval.embed"], staged["retrieval.ann"], staged["retrieval.bm25"]
    assert retrieval.start_ns <= embed.start_ns <= embed.end_ns <= ann.start_ns  # ann: as the search ran it
    assert ann.end_ns <= bm25.start_ns <= bm25.end_ns <= retrieval.end_ns
    assert chat.kind == 3  # CLIENT
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.name == f"chat {chat.attributes['gen_ai.request.model']}"
    assert chat.attributes["gen_ai.response.model"] == "scripted"  # what the server said it ran
    assert chat.attributes["gen_ai.usage.input_tokens"] > 0
    assert chat.attributes["gen_ai.usage.output_tokens"] > 0
    assert chat.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert turn.start_ns <= chat.start_ns <= chat.end_ns <= turn.end_ns
    # privacy by default: no question, prompt, answer or document text in any span
    text = json.dumps([[s.name, s.attributes] for s in spans])
    assert "gen_ai.input.messages" not in text and "flight" not in text and "travel" not in text.lower()
    assert POLICY  # (the indexed document the answer came from)


# -- span shapes, in memory ---------------------------------------------------------------------------------


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.install(_provider(exporter))
    yield exporter
    tracing.reset()


def _play(trace: TurnTrace, state: ConversationState, events: list[Event]) -> None:
    for n, event in enumerate(events, 1):
        fold(state, f"1-{n}", event)
        trace.observe(state, event)


def _agent_turn(at_ms: int) -> list[Event]:
    call = ToolCall(id="c1", name="send_email", arguments='{"to": "a@b.test"}')
    return [
        UserMessage(text="mail the secret plan", user="u", tenant="acme", turn=1, at_ms=at_ms),
        TurnStarted(route="agent", turn=1),
        LLMRequested(step=0, model="m", prompt_hash="h", messages=[{"role": "user", "content": "plan"}],
                     turn=1, at_ms=at_ms),
        LLMFailed(step=0, code="llm_timeout", recoverable=True, turn=1),
        LLMCompleted(step=0, model="m", prompt_hash="h", text="ok", tool_calls=(call,),
                     finish_reason="tool_calls", tokens_in=30, tokens_out=5, latency_ms=20.0, turn=1),
        ApprovalRequested(approval_id="a1", step=0, call_id="c1", tool="send_email", args={}, args_hash="x",
                          room="legal", turn=1, at_ms=at_ms),
        ApprovalDecided(approval_id="a1", decision="approved", reviewer="r", turn=1),
        ToolIntent(step=0, call_id="c1", tool="send_email", args={}, idempotency_key="k", turn=1),
        ToolResult(step=0, call_id="c1", tool="send_email", idempotency_key="k", error="smtp_error: refused",
                   latency_ms=3.0, turn=1),
        AnswerCompleted(text="the secret plan was not sent", turn=1),
    ]  # fmt: skip


def test_an_agent_turn_has_a_span_per_step_under_its_turn(exporter: InMemorySpanExporter) -> None:
    trace = TurnTrace("conv-1")
    _play(trace, ConversationState(conversation_id="conv-1"), _agent_turn(time.time_ns() // 1_000_000 - 50))
    trace.close()
    tracing.flush()  # the span maker's batch, now
    spans: dict[str, ReadableSpan] = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"turn", "chat m", "approval send_email", "execute_tool send_email"}
    turn = spans.pop("turn")
    assert turn.parent is None  # no traceparent in the message: a trace of its own
    for span in spans.values():
        assert span.parent is not None and span.parent.span_id == turn.context.span_id
    assert turn.attributes is not None and turn.attributes["docent.route"] == "agent"
    assert turn.attributes["docent.turn.outcome"] == "answer_completed"
    assert "docent.turn.suspended" not in turn.attributes
    assert [e.name for e in turn.events] == ["approval_requested"]
    failed = [
        s
        for s in exporter.get_finished_spans()
        if s.name == "chat m" and s.status.status_code == StatusCode.ERROR
    ]
    assert len(failed) == 1 and failed[0].attributes is not None
    assert failed[0].attributes["error.type"] == "llm_timeout"
    chats = [s for s in exporter.get_finished_spans() if s.name == "chat m"]
    done = next(s for s in chats if s.status.status_code != StatusCode.ERROR)
    assert done.kind == SpanKind.CLIENT and done.attributes is not None
    assert done.attributes["gen_ai.usage.input_tokens"] == 30
    assert done.attributes["gen_ai.response.finish_reasons"] == ("tool_calls",)
    assert "gen_ai.input.messages" not in done.attributes  # privacy: content is opt-in
    approval = spans["approval send_email"]
    assert approval.attributes is not None and approval.attributes["docent.approval.outcome"] == "approved"
    assert approval.start_time is not None and approval.end_time is not None
    assert approval.end_time - approval.start_time >= 40_000_000  # from the request's append time
    tool = spans["execute_tool send_email"]
    assert tool.status.status_code == StatusCode.ERROR
    assert tool.attributes is not None and tool.attributes["error.type"] == "smtp_error"
    everything = json.dumps([dict(s.attributes or {}) for s in exporter.get_finished_spans()])
    assert "secret" not in everything


def test_prompt_content_in_spans_is_opt_in(exporter: InMemorySpanExporter) -> None:
    tracing.install(_provider(exporter), capture=True)
    trace = TurnTrace("conv-2")
    _play(trace, ConversationState(conversation_id="conv-2"), _agent_turn(0)[:5])
    assert exporter.get_finished_spans() == ()  # made when the activation ends
    trace.close()
    tracing.flush()
    chat = next(s for s in exporter.get_finished_spans() if s.status.status_code != StatusCode.ERROR)
    assert chat.attributes is not None
    assert json.loads(str(chat.attributes["gen_ai.input.messages"])) == [{"role": "user", "content": "plan"}]


def _provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def test_a_suspended_turn_resumes_under_the_same_parent(exporter: InMemorySpanExporter) -> None:
    tracer = tracing.tracer()
    assert tracer is not None
    with tracer.start_as_current_span("ask") as ask:
        parent = tracing.traceparent(ask)
    state = ConversationState(conversation_id="c")
    first = TurnTrace("c")
    _play(
        first, state, [UserMessage(text="q", turn=1, traceparent=parent), TurnStarted(route="agent", turn=1)]
    )
    first.close()  # the activation ends: the turn waits for a human
    second = TurnTrace("c")  # the next activation
    second.observe(state, AnswerCompleted(text="a", turn=1))
    tracing.flush()
    turns = [s for s in exporter.get_finished_spans() if s.name == "turn"]
    assert len(turns) == 2
    assert {s.context.trace_id for s in turns} == {ask.get_span_context().trace_id}
    assert all(s.parent is not None and s.parent.span_id == ask.get_span_context().span_id for s in turns)
    assert turns[0].attributes is not None and turns[0].attributes["docent.turn.suspended"] is True


def test_tracing_is_off_without_an_endpoint_and_refuses_another_protocol() -> None:
    tracing.reset()
    try:
        assert tracing.configure("web", {}) is False
        assert tracing.tracer() is None
        trace = TurnTrace("c")
        state = ConversationState(conversation_id="c")
        _play(trace, state, _agent_turn(0))  # inert
        assert trace.current is None and trace.pending == []
        assert tracing.parent_of("") is None and tracing.parent_of("not-a-traceparent") is None
        tracing.reset()
        with pytest.raises(ConfigError, match="http/protobuf"):
            tracing.configure(
                "web", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
            )
        tracing.check_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})  # off: nothing to check
    finally:
        tracing.reset()


def test_retrieval_stages_are_spans_at_their_measured_times(exporter: InMemorySpanExporter) -> None:
    state = ConversationState(conversation_id="c")
    trace = TurnTrace("c")
    _play(trace, state, [UserMessage(text="q", turn=1), TurnStarted(route="qa", turn=1)])
    timings = {"embed": 1.0, "ann": 0.5, "bm25": 2.0, "fuse": 0.2, "catalog": 0.3, "rerank": 1.5}
    timings["total"] = 9.0  # not a stage: no span
    trace.retrieval(state, timings, 10.0, 3, {"ann": 3.0})  # 2 ms waited for the search's thread
    trace.observe(state, AnswerCompleted(text="a", turn=1))
    tracing.flush()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    retrieval = spans["retrieval"]
    assert retrieval.attributes is not None and retrieval.attributes["docent.retrieval.hits"] == 3
    assert retrieval.start_time is not None and retrieval.end_time is not None
    assert retrieval.end_time - retrieval.start_time == 10_000_000
    placed, origin = {}, retrieval.start_time
    for stage in ("embed", "ann", "bm25", "fuse", "catalog", "rerank"):
        span = spans[f"retrieval.{stage}"]
        assert span.parent is not None and span.parent.span_id == retrieval.context.span_id
        assert span.start_time is not None and span.end_time is not None
        assert retrieval.start_time <= span.start_time <= span.end_time <= retrieval.end_time
        placed[stage] = (span.start_time - origin) / 1e6, (span.end_time - span.start_time) / 1e6
    assert placed == {
        "embed": (0.0, 1.0), "ann": (3.0, 0.5), "bm25": (3.5, 2.0), "fuse": (5.5, 0.2),
        "catalog": (5.7, 0.3), "rerank": (6.0, 1.5),
    }  # fmt: skip
    assert "retrieval.total" not in spans


def test_the_span_batcher_makes_off_the_turn_in_batches_and_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handed: list[list[str]] = []

    def sink(spans: Sequence[Any]) -> None:
        handed.append(list(spans))

    batcher = SpanBatcher(sink, delay_ms=20, max_spans=5, batch_spans=2)
    batcher.later(lambda: ["a", "b", "c"])
    batcher.later(lambda: [str(1 // 0)])  # a failure is logged, the next ones still made
    batcher.later(lambda: ["d"])
    batcher.flush()
    assert handed == [["a", "b"], ["c", "d"]]  # at most batch_spans at a time
    batcher.later(lambda: ["e"])  # the batcher's thread, within delay_ms
    deadline = time.monotonic() + 10
    while len(handed) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert handed[2:] == [["e"]]
    batcher.later(lambda: ["f", "g", "h", "i", "j", "k"])  # over max_spans: the first five kept
    batcher.flush()
    assert [x for batch in handed[3:] for x in batch] == ["f", "g", "h", "i", "j"]
    monkeypatch.setattr(span_batch, "MAX_QUEUED_MAKES", 0)
    count = len(handed)
    batcher.later(lambda: ["l"])  # over the turns bound: dropped
    batcher.flush()
    assert len(handed) == count
    settings = span_batch.sdk_env({"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_BSP_MAX_QUEUE_SIZE": "lots"})
    assert list(settings.values()) == [100, 8192, 2048]  # a malformed value: the default
    closed: list[bool] = []
    batcher.close = lambda: closed.append(True)
    batcher.shutdown()
    assert closed == [True]


def test_a_wake_to_make_spans_hands_on_only_whole_batches_before_the_delay() -> None:
    """MAKES_PER_WAKE turns wake the thread to make their spans; it hands on only full batches then (a POST
    costs the same whatever its size), the rest when the delay has passed (or at a flush)."""
    handed: list[list[str]] = []
    queued = 2 * span_batch.MAKES_PER_WAKE
    batch = queued * 5 // 8  # one whole batch of what is queued, and a rest
    batcher = SpanBatcher(handed.append, delay_ms=600_000, max_spans=1000, batch_spans=batch)
    for n in range(queued):
        batcher.later(lambda n=n: [f"s{n}"])  # type: ignore[misc]
    batcher._wake.set()  # as the MAKES_PER_WAKE-th did, were the thread making the first ones meanwhile
    deadline = time.monotonic() + 10
    while (batcher._makes or len(batcher._spans) > queued - batch) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [len(b) for b in handed] == [batch] and len(batcher._spans) == queued - batch
    batcher.flush()
    assert [len(b) for b in handed] == [batch, queued - batch]
    batcher.shutdown()


def test_installing_the_configured_provider_again_keeps_its_one_batcher() -> None:
    tracing.reset()
    try:
        assert tracing.configure("worker", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
        provider, batcher, tracer = tracing.provider(), tracing._state["batcher"], tracing.tracer()
        assert isinstance(batcher, SpanBatcher)
        tracing.install(provider)  # a bench's traced arm, once a turn
        assert tracing._state["batcher"] is batcher and tracing.tracer() is tracer
    finally:
        tracing.shutdown()


def test_a_traceparent_reads_as_the_w3c_propagator_reads_it() -> None:
    """`parent_of` reads the plain version-00 value itself (what `traceparent` writes) and leaves every
    other to the propagator: the same span context (or none) either way."""
    ids = "0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331"
    values = [
        f"00-{ids}-01", f"00-{ids}-00", f"00-{ids}-ff", f"00-{'0' * 32}-b7ad6b7169203331-01",
        f"00-0af7651916cd43dd8448eb211c80319c-{'0' * 16}-01", f"00-{ids.upper()}-01", f"01-{ids}-01-later",
        f"ff-{ids}-01", f" 00-{ids}-01", f"00-{ids}-01-extra", "00-xyz", "",
    ]  # fmt: skip
    propagator = TraceContextTextMapPropagator()
    for value in values:
        expected = otel_trace.get_current_span(propagator.extract({"traceparent": value})).get_span_context()
        found = tracing.parent_of(value)
        if not expected.is_valid:
            assert found is None, value
            continue
        assert found is not None, value
        fields = ("trace_id", "span_id", "is_remote", "trace_flags", "trace_state")
        assert [getattr(found, f) for f in fields] == [getattr(expected, f) for f in fields], value
