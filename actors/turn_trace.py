"""A turn's OpenTelemetry spans, made from the events the conversation actor appends (`store.tracing`).

    trace = TurnTrace(conv_id)              one per activation; inert when tracing is off
    trace.observe(state, event)             after each appended event (the actor's `emit`)
    trace.retrieval(state, timings_ms, ...) after a search, with the Searcher's per-stage timings
    trace.close()                           at the end of the activation

The turn span (`turn`) is a child of the web process's `ask` span: its parent is the W3C `traceparent` the
web wrote into the user message (the inbox entry the dramatiq message wakes the actor for). A turn that
waits for a human ends its activation; the activation that resumes it opens another `turn` span under the
same parent, so the whole turn stays one trace. Under it, one span per step, timed from the step's own
event (its latency, or its request's append time):

    retrieval                       `retrieval.<stage>` children: embed, ann ‖ bm25, fuse, catalog, rerank
    chat <model>                    GenAI semantic conventions: gen_ai.request.model, gen_ai.usage.*, ...
    execute_tool <tool>             gen_ai.tool.name, gen_ai.tool.call.id; error status on a failed call
    approval <tool>                 from the request to the decision (approved, denied, expired)

Spans come from appended events only, so a replay after a crash does not make a step's span twice. No
prompt, question or answer text is put in a span unless `store.tracing.capture_content()` (opt-in).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from actors.state import ConversationState, TurnState
from store import tracing
from store.events import (
    TERMINAL,
    AnswerCompleted,
    ApprovalDecided,
    ApprovalExpired,
    ApprovalRequested,
    Event,
    LimitHit,
    LLMCompleted,
    LLMFailed,
    ToolResult,
    TurnFailed,
    TurnStarted,
)

NS_PER_MS = 1_000_000
GEN_AI_SYSTEM = "openai"  # every backend speaks the OpenAI chat protocol (the local one imitates it)
# Retrieval stages laid out as the Searcher runs them: (stage, the stages it starts after).
STAGE_ORDER = (
    ("embed", ()),
    ("ann", ("embed",)),
    ("bm25", ("embed",)),
    ("fuse", ("ann", "bm25")),
    ("catalog", ("fuse",)),
    ("rerank", ("catalog",)),
)


def _ns(ms: float) -> int:
    return int(ms * NS_PER_MS)


class TurnTrace:
    def __init__(self, conversation_id: str, tracer: Tracer | None = None) -> None:
        self.tracer = tracer if tracer is not None else tracing.tracer()
        self.conversation_id = conversation_id
        self.span: Span | None = None
        self.turn = 0  # the turn `span` belongs to
        self.ended: set[int] = set()

    # -- the turn span ------------------------------------------------------------------------------------

    def _turn_span(self, state: ConversationState) -> Span | None:
        current = state.current
        if self.tracer is None or current is None or current.number in self.ended:
            return None
        if self.span is not None and self.turn == current.number:
            return self.span
        self.close()
        self.span = self.tracer.start_span(
            "turn",
            context=tracing.context_of(current.question.traceparent),
            kind=SpanKind.CONSUMER,
            attributes=self._turn_attributes(current),
        )
        self.turn = current.number
        return self.span

    def _turn_attributes(self, turn: TurnState) -> dict[str, str | int]:
        attributes: dict[str, str | int] = {
            "docent.conversation.id": self.conversation_id,
            "docent.turn": turn.number,
            "docent.tenant": turn.question.tenant,
            "docent.mode": turn.question.mode,
        }
        if turn.route:
            attributes["docent.route"] = turn.route
        return attributes

    def close(self, suspended: bool = True) -> None:
        if self.span is not None:
            if suspended:
                self.span.set_attribute("docent.turn.suspended", True)  # waits for a human or a retry
            self.span.end()
        self.span = None

    # -- the steps ----------------------------------------------------------------------------------------

    def observe(self, state: ConversationState, event: Event) -> None:
        parent = self._turn_span(state)
        if parent is None or self.tracer is None:
            return
        turn = state.current
        assert turn is not None
        now = time.time_ns()
        match event:
            case TurnStarted():
                parent.set_attribute("docent.route", event.route)
                if event.workflow:
                    parent.set_attribute("docent.workflow", event.workflow)
            case LLMCompleted():
                self._llm_span(parent, turn, event, now - _ns(event.latency_ms), now)
            case LLMFailed():
                requested = turn.llm_requested.get(event.step)
                start = _ns(requested.at_ms) if requested else now
                self._llm_span(parent, turn, event, min(start, now), now)
            case ToolResult():
                self._tool_span(parent, event, now)
            case ApprovalRequested():
                parent.add_event("approval_requested", {"gen_ai.tool.name": event.tool})
            case ApprovalDecided() | ApprovalExpired():
                self._approval_span(parent, turn, event, now)
            case _ if isinstance(event, TERMINAL):
                self._end_turn(parent, turn, event)

    def retrieval(
        self, state: ConversationState, timings_ms: Mapping[str, float], latency_ms: float, hits: int
    ) -> None:
        parent = self._turn_span(state)
        if parent is None or self.tracer is None:
            return
        end = time.time_ns()
        start = end - _ns(latency_ms)
        context = trace.set_span_in_context(parent)
        span = self.tracer.start_span("retrieval", context=context, start_time=start)
        span.set_attribute("docent.step", 0)
        span.set_attribute("docent.retrieval.hits", hits)
        inner = trace.set_span_in_context(span)
        ends: dict[str, int] = {}
        for stage, after in STAGE_ORDER:
            if stage not in timings_ms:
                continue
            begin = max((ends[s] for s in after if s in ends), default=start)
            ends[stage] = begin + _ns(timings_ms[stage])
            self.tracer.start_span(f"retrieval.{stage}", context=inner, start_time=begin).end(ends[stage])
        span.end(end)

    def _llm_span(
        self, parent: Span, turn: TurnState, event: LLMCompleted | LLMFailed, start: int, end: int
    ) -> None:
        assert self.tracer is not None
        requested = turn.llm_requested.get(event.step)
        model = requested.model if requested else getattr(event, "model", "")  # "chat <request model>"
        attributes: dict[str, str | int | float | list[str]] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.system": GEN_AI_SYSTEM,
            "gen_ai.request.model": model,
            "docent.step": event.step,
        }
        if isinstance(event, LLMCompleted):
            attributes |= {
                "gen_ai.response.model": event.model,
                "gen_ai.usage.input_tokens": event.tokens_in,
                "gen_ai.usage.output_tokens": event.tokens_out,
                "gen_ai.response.finish_reasons": [event.finish_reason or "unknown"],
                "docent.llm.cost_usd": event.cost_usd,
                "docent.llm.first_token_ms": event.first_token_ms,
                "docent.llm.tool_calls": len(event.tool_calls),
            }
        if tracing.capture_content():
            if requested is not None:
                attributes["gen_ai.input.messages"] = json.dumps(requested.messages)
            if isinstance(event, LLMCompleted):
                attributes["gen_ai.output.messages"] = json.dumps(
                    [{"role": "assistant", "content": event.text}]
                )
        span = self.tracer.start_span(
            f"chat {model}".strip(), context=trace.set_span_in_context(parent), kind=SpanKind.CLIENT,
            attributes=attributes, start_time=start,
        )  # fmt: skip
        if isinstance(event, LLMFailed):
            span.set_attribute("error.type", event.code)
            span.set_status(Status(StatusCode.ERROR, event.code))
        span.end(end)

    def _tool_span(self, parent: Span, event: ToolResult, end: int) -> None:
        assert self.tracer is not None
        span = self.tracer.start_span(
            f"execute_tool {event.tool}", context=trace.set_span_in_context(parent), kind=SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": event.tool,
                "gen_ai.tool.call.id": event.call_id, "docent.step": event.step,
            },
            start_time=end - _ns(event.latency_ms),
        )  # fmt: skip
        if event.error is not None:
            code = event.error.split(":", 1)[0]
            span.set_attribute("error.type", code)
            span.set_status(Status(StatusCode.ERROR, code))
        span.end(end)

    def _approval_span(
        self, parent: Span, turn: TurnState, event: ApprovalDecided | ApprovalExpired, end: int
    ) -> None:
        assert self.tracer is not None
        approval = turn.approvals.get(event.approval_id)
        if approval is None:
            return
        outcome = event.decision if isinstance(event, ApprovalDecided) else "expired"
        requested = approval.request
        span = self.tracer.start_span(
            f"approval {requested.tool}", context=trace.set_span_in_context(parent),
            attributes={
                "gen_ai.tool.name": requested.tool, "docent.approval.outcome": outcome,
                "docent.approval.room": requested.room, "docent.step": requested.step,
            },
            start_time=min(_ns(requested.at_ms), end),
        )  # fmt: skip
        span.end(end)

    def _end_turn(self, span: Span, turn: TurnState, event: Event) -> None:
        span.set_attribute("docent.turn.outcome", turn.outcome or type(event).__name__)
        span.set_attribute("gen_ai.usage.input_tokens", sum(c.tokens_in for c in turn.llm_completed.values()))
        span.set_attribute(
            "gen_ai.usage.output_tokens", sum(c.tokens_out for c in turn.llm_completed.values())
        )
        span.set_attribute("docent.turn.cost_usd", turn.cost_usd)
        match event:
            case AnswerCompleted():
                span.set_attribute("docent.answer.citations", len(event.citations))
                span.set_attribute("docent.answer.dropped_citations", len(event.dropped_citations))
                span.set_attribute("docent.answer.unsupported_spans", len(event.unsupported))
            case TurnFailed():
                span.set_attribute("error.type", event.code)
                span.set_status(Status(StatusCode.ERROR, event.code))
            case LimitHit():
                span.set_attribute("docent.limit", event.limit)
        self.ended.add(turn.number)
        self.close(suspended=False)
