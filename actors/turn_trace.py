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

Spans come from appended events only, so a replay after a crash does not make a step's span twice. They
are made when the activation ends (`close`), all in one go from what `observe` kept (the events that make a
span, a few list appends per turn): the spans' cost is paid once, in a tight loop, not between the steps;
a killed worker loses the spans of that activation, as an unflushed exporter would. No
prompt, question or answer text is put in a span unless `store.tracing.capture_content()` (opt-in).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

from opentelemetry.trace import SpanContext, SpanKind, Tracer
from opentelemetry.util.types import AttributeValue

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


# The events a span is made from (or that set the turn span's attributes); the others are not kept.
TRACED = (
    TurnStarted, LLMCompleted, LLMFailed, ToolResult, ApprovalRequested, ApprovalDecided, ApprovalExpired,
    *TERMINAL,
)  # fmt: skip


def _ns(ms: float) -> int:
    return int(ms * NS_PER_MS)


Retrieval = tuple[dict[str, float], float, int]  # a search's stage timings, latency and hits
Pending = tuple[TurnState, Event | Retrieval, int]  # what a span is made from, and when it was observed


class TurnTrace:
    def __init__(self, conversation_id: str, tracer: Tracer | None = None) -> None:
        self.tracer = tracer if tracer is not None else tracing.tracer()
        self.conversation_id = conversation_id
        self.current: TurnState | None = None  # the turn the open span belongs to (None: no span open)
        self.start_ns = 0
        self.pending: list[Pending] = []  # made into spans when the activation ends (`close`)
        self.ended: set[int] = set()
        # the turn span's, while `close` makes it
        self.attributes: dict[str, AttributeValue] = {}
        self.events: list[object] = []
        self.error: str | None = None

    # -- observing: a few appends per turn; the spans are made in one go when the activation ends --------

    def _open(self, state: ConversationState) -> TurnState | None:
        current = state.current
        if self.tracer is None or current is None or current.number in self.ended:
            return None
        if self.current is None or self.current.number != current.number:
            self.close()
            self.current, self.start_ns = current, time.time_ns()
        return current

    def observe(self, state: ConversationState, event: Event) -> None:
        turn = self._open(state)
        if turn is None or not isinstance(event, TRACED):
            return
        self.pending.append((turn, event, time.time_ns()))
        if isinstance(event, TERMINAL):
            self.ended.add(turn.number)
            self.close(suspended=False)

    def retrieval(
        self, state: ConversationState, timings_ms: Mapping[str, float], latency_ms: float, hits: int
    ) -> None:
        turn = self._open(state)
        if turn is not None:
            self.pending.append((turn, (dict(timings_ms), latency_ms, hits), time.time_ns()))

    def close(self, suspended: bool = True) -> None:
        """Make this activation's spans of the open turn: the steps', then the turn's."""
        turn, pending = self.current, self.pending
        self.current, self.pending = None, []
        if turn is None or self.tracer is None:
            return
        attributes = self._turn_attributes(turn)
        parent = tracing.parent_of(turn.question.traceparent)
        begun = tracing.begin(self.tracer, parent, "turn", kind=SpanKind.CONSUMER, attributes=attributes)
        if begun is None:
            return  # not sampled
        context, sampled = begun
        self.attributes, self.events, self.error = sampled | attributes, [], None
        for step_turn, item, at_ns in pending:
            if isinstance(item, tuple):
                self._retrieval_spans(context, *item, end=at_ns)
            else:
                self._step(context, step_turn, item, at_ns)
        if suspended:
            self.attributes["docent.turn.suspended"] = True  # waits for a human or a retry
        tracing.finished(
            self.tracer, parent, "turn", start_ns=self.start_ns, end_ns=time.time_ns(),
            attributes=self.attributes, kind=SpanKind.CONSUMER, error=self.error, context=context,
            events=self.events,
        )  # fmt: skip

    def _turn_attributes(self, turn: TurnState) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {
            "docent.conversation.id": self.conversation_id,
            "docent.turn": turn.number,
            "docent.tenant": turn.question.tenant,
            "docent.mode": turn.question.mode,
        }
        if turn.route:
            attributes["docent.route"] = turn.route
        return attributes

    # -- the steps' spans ---------------------------------------------------------------------------------

    def _step(self, parent: SpanContext, turn: TurnState, event: Event, now: int) -> None:
        assert self.tracer is not None
        match event:
            case TurnStarted():
                self.attributes["docent.route"] = event.route
                if event.workflow:
                    self.attributes["docent.workflow"] = event.workflow
            case LLMCompleted():
                self._llm_span(parent, turn, event, now - _ns(event.latency_ms), now)
            case LLMFailed():
                requested = turn.llm_requested.get(event.step)
                start = _ns(requested.at_ms) if requested else now
                self._llm_span(parent, turn, event, min(start, now), now)
            case ToolResult():
                self._tool_span(parent, event, now)
            case ApprovalRequested():
                self.events.append(
                    tracing.event(self.tracer, "approval_requested", {"gen_ai.tool.name": event.tool}, now)
                )
            case ApprovalDecided() | ApprovalExpired():
                self._approval_span(parent, turn, event, now)
            case _ if isinstance(event, TERMINAL):
                self._end_turn(turn, event)

    def _retrieval_spans(
        self, parent: SpanContext, timings_ms: Mapping[str, float], latency_ms: float, hits: int, end: int
    ) -> None:
        assert self.tracer is not None
        start = end - _ns(latency_ms)
        retrieval = tracing.finished(
            self.tracer, parent, "retrieval", start_ns=start, end_ns=end,
            attributes={"docent.step": 0, "docent.retrieval.hits": hits},
        )  # fmt: skip
        ends: dict[str, int] = {}
        for stage, after in STAGE_ORDER:
            if stage not in timings_ms:
                continue
            begin = max((ends[s] for s in after if s in ends), default=start)
            ends[stage] = begin + _ns(timings_ms[stage])
            tracing.finished(self.tracer, retrieval, f"retrieval.{stage}", start_ns=begin, end_ns=ends[stage])

    def _llm_span(
        self, parent: SpanContext, turn: TurnState, event: LLMCompleted | LLMFailed, start: int, end: int
    ) -> None:
        assert self.tracer is not None
        requested = turn.llm_requested.get(event.step)
        model = requested.model if requested else getattr(event, "model", "")  # "chat <request model>"
        attributes: dict[str, AttributeValue] = {
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
                "gen_ai.response.finish_reasons": (event.finish_reason or "unknown",),
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
        tracing.finished(
            self.tracer, parent, f"chat {model}".strip(), start_ns=start, end_ns=end,
            attributes=attributes, kind=SpanKind.CLIENT,
            error=event.code if isinstance(event, LLMFailed) else None,
        )  # fmt: skip

    def _tool_span(self, parent: SpanContext, event: ToolResult, end: int) -> None:
        assert self.tracer is not None
        tracing.finished(
            self.tracer, parent, f"execute_tool {event.tool}",
            start_ns=end - _ns(event.latency_ms), end_ns=end,
            attributes={
                "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": event.tool,
                "gen_ai.tool.call.id": event.call_id, "docent.step": event.step,
            },
            error=event.error.split(":", 1)[0] if event.error is not None else None,
        )  # fmt: skip

    def _approval_span(
        self, parent: SpanContext, turn: TurnState, event: ApprovalDecided | ApprovalExpired, end: int
    ) -> None:
        assert self.tracer is not None
        approval = turn.approvals.get(event.approval_id)
        if approval is None:
            return
        outcome = event.decision if isinstance(event, ApprovalDecided) else "expired"
        requested = approval.request
        tracing.finished(
            self.tracer, parent, f"approval {requested.tool}",
            start_ns=min(_ns(requested.at_ms), end), end_ns=end,
            attributes={
                "gen_ai.tool.name": requested.tool, "docent.approval.outcome": outcome,
                "docent.approval.room": requested.room, "docent.step": requested.step,
            },
        )  # fmt: skip

    def _end_turn(self, turn: TurnState, event: Event) -> None:
        self.attributes |= {
            "docent.turn.outcome": turn.outcome or type(event).__name__,
            "gen_ai.usage.input_tokens": sum(c.tokens_in for c in turn.llm_completed.values()),
            "gen_ai.usage.output_tokens": sum(c.tokens_out for c in turn.llm_completed.values()),
            "docent.turn.cost_usd": turn.cost_usd,
        }
        match event:
            case AnswerCompleted():
                self.attributes["docent.answer.citations"] = len(event.citations)
                self.attributes["docent.answer.dropped_citations"] = len(event.dropped_citations)
                self.attributes["docent.answer.unsupported_spans"] = len(event.unsupported)
            case TurnFailed():
                self.error = event.code
            case LimitHit():
                self.attributes["docent.limit"] = event.limit
