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

    retrieval                       `retrieval.<stage>` children: embed, ann, bm25, fuse, catalog, rerank
    chat <model>                    GenAI semantic conventions: gen_ai.request.model, gen_ai.usage.*, ...
    execute_tool <tool>             gen_ai.tool.name, gen_ai.tool.call.id; error status on a failed call
    approval <tool>                 from the request to the decision (approved, denied, expired)

Spans come from appended events only, so a replay after a crash does not make a step's span twice. While
the turn runs, `observe` keeps the events that make a span, each with what its span needs from the turn's
state at that moment (a list append); `close` hands the lot to `store.tracing.later`, and the span
batcher's thread (`store.span_batch`) makes the spans of many turns in one batch (`TurnSpans.make`), off
the turn's path: nothing is made between the steps, and nothing the actor goes on changing is read there.
A killed worker loses the spans of the activations not yet made, as an unflushed exporter would. No prompt,
question or answer text is put in a span unless `store.tracing.capture_content()` (opt-in).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

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
    LLMRequested,
    ToolResult,
    TurnFailed,
    TurnStarted,
)

NS_PER_MS = 1_000_000
GEN_AI_SYSTEM = "openai"  # every backend speaks the OpenAI chat protocol (the local one imitates it)
# Retrieval stages in the Searcher's order, one after the other (one absent from the timings is skipped).
STAGE_ORDER = ("embed", "ann", "bm25", "fuse", "catalog", "rerank")
STAGE_SPANS = {stage: f"retrieval.{stage}" for stage in STAGE_ORDER}  # their spans' names


# By exact type (the events are final tagged structs): `isinstance` against a tuple of msgspec's Struct
# classes tries each (through their metaclass): 1.6 µs for an event that is none of the kept ones.
_TERMINAL = frozenset(TERMINAL)


def _ns(ms: float) -> int:
    return int(ms * NS_PER_MS)


class Totals(NamedTuple):
    """The turn's figures when it ended (for the turn span's attributes)."""

    outcome: str
    tokens_in: int
    tokens_out: int
    cost_usd: float


class Retrieval(NamedTuple):
    """A search's stage timings (and start offsets when the Searcher gave them), latency and hits."""

    timings_ms: Mapping[str, float]
    starts_ms: Mapping[str, float]
    latency_ms: float
    hits: int


# A kept step: its event (or a search), when it was observed, and what its span needs from the turn's
# state then (the LLM request, the approval request, the turn's totals; None otherwise).
Step = tuple[Event | Retrieval, int, LLMRequested | ApprovalRequested | Totals | None]


class TurnTrace:
    def __init__(self, conversation_id: str, tracer: Tracer | None = None) -> None:
        self.tracer = tracer if tracer is not None else tracing.tracer()
        self.conversation_id = conversation_id
        self.current: TurnState | None = None  # the turn the open span belongs to (None: no span open)
        self.start_ns = 0
        self.pending: list[Step] = []  # made into spans when the activation ends (`close`)
        self.ended: set[int] = set()

    def _open(self, state: ConversationState) -> TurnState | None:
        current = state.current
        if self.tracer is None or current is None or current.number in self.ended:
            return None
        if self.current is None or self.current.number != current.number:
            self.close()
            self.start_ns = time.time_ns()
        self.current = current  # (the same turn's state folded anew: the same span)
        return current

    def _turn(self, state: ConversationState) -> TurnState | None:
        """The open turn; its checks (`_open`) only when the turn changed (its TurnState is a new object:
        folding a question makes it)."""
        turn = state.current
        if turn is None or turn is not self.current:
            return self._open(state)
        return turn

    def observe(self, state: ConversationState, event: Event) -> None:
        """One dictionary lookup for an event no span is made from."""
        turn = self._turn(state)  # a turn's first event opens its span, whichever it is
        if turn is None:
            return
        needed = _KEPT.get(type(event))
        if needed is None:
            return
        self.pending.append((event, time.time_ns(), needed(turn, event)))
        if needed is _totals:
            self.ended.add(turn.number)
            self.close(suspended=False)

    def retrieval(
        self,
        state: ConversationState,
        timings_ms: Mapping[str, float],
        latency_ms: float,
        hits: int,
        starts_ms: Mapping[str, float] | None = None,
    ) -> None:
        turn = self._turn(state)
        if turn is not None:
            search = Retrieval(timings_ms, starts_ms or {}, latency_ms, hits)  # the search's own: not changed
            self.pending.append((search, time.time_ns(), None))

    def close(self, suspended: bool = True) -> None:
        """Queue the spans of the open turn's steps and of the turn (made on the span maker's thread)."""
        turn, pending = self.current, self.pending
        self.current, self.pending = None, []
        if turn is None or self.tracer is None:
            return
        spans = TurnSpans(
            self.tracer, _turn_attributes(self.conversation_id, turn), turn.question.traceparent,
            self.start_ns, time.time_ns(), pending, suspended=suspended, capture=tracing.capture_content(),
        )  # fmt: skip
        tracing.later(spans.make)


# The events a span is made from (or that set the turn span's attributes), each with what its span will
# need from the turn's state, read when it is observed (the actor goes on folding); the others are not kept.
# By the event's exact type, one lookup (`_KEPT`).
def _nothing(turn: TurnState, event: Event) -> None:
    return None


def _llm_request(turn: TurnState, event: LLMCompleted | LLMFailed) -> LLMRequested | None:
    return turn.llm_requested.get(event.step)


def _approval_request(turn: TurnState, event: ApprovalDecided | ApprovalExpired) -> ApprovalRequested | None:
    approval = turn.approvals.get(event.approval_id)
    return approval.request if approval is not None else None


def _totals(turn: TurnState, event: Event) -> Totals:
    completed = turn.llm_completed.values()
    return Totals(
        turn.outcome or type(event).__name__, sum(c.tokens_in for c in completed),
        sum(c.tokens_out for c in completed), turn.cost_usd,
    )  # fmt: skip


_KEPT: dict[type, Callable[[TurnState, Any], LLMRequested | ApprovalRequested | Totals | None]] = {
    TurnStarted: _nothing, ToolResult: _nothing, ApprovalRequested: _nothing,
    LLMCompleted: _llm_request, LLMFailed: _llm_request,
    ApprovalDecided: _approval_request, ApprovalExpired: _approval_request,
    **{kind: _totals for kind in TERMINAL},
}  # fmt: skip


def _turn_attributes(conversation_id: str, turn: TurnState) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {
        "docent.conversation.id": conversation_id,
        "docent.turn": turn.number,
        "docent.tenant": turn.question.tenant,
        "docent.mode": turn.question.mode,
    }
    if turn.route:
        attributes["docent.route"] = turn.route
    return attributes


class TurnSpans:
    """One activation's spans of a turn, from what `TurnTrace` kept: `make` makes them all (the turn's
    span last, with the attributes its steps added)."""

    def __init__(
        self,
        tracer: Tracer,
        attributes: dict[str, AttributeValue],
        traceparent: str,
        start_ns: int,
        end_ns: int,
        steps: list[Step],
        *,
        suspended: bool,
        capture: bool,
    ) -> None:
        self.tracer, self.attributes, self.traceparent = tracer, attributes, traceparent
        self.start_ns, self.end_ns, self.steps = start_ns, end_ns, steps
        self.suspended, self.capture = suspended, capture
        self.events: list[tracing.SpanEvent] = []
        self.error: str | None = None
        self.spans: list[object] = []  # made

    def make(self) -> list[object]:
        parent = tracing.parent_of(self.traceparent)
        begun = tracing.begin(self.tracer, parent, "turn", kind=SpanKind.CONSUMER, attributes=self.attributes)
        if begun is None:
            return self.spans  # not sampled: none
        context, sampled = begun
        self.attributes = sampled | self.attributes
        for item, at_ns, needed in self.steps:
            if isinstance(item, Retrieval):
                self._retrieval(context, item, at_ns)
            else:
                self._step(context, item, at_ns, needed)
        if self.suspended:
            self.attributes["docent.turn.suspended"] = True  # waits for a human or a retry
        tracing.finished(
            self.tracer, parent, "turn", start_ns=self.start_ns, end_ns=self.end_ns,
            attributes=self.attributes, kind=SpanKind.CONSUMER, error=self.error, context=context,
            events=self.events, into=self.spans,
        )  # fmt: skip
        return self.spans

    def _step(self, parent: SpanContext, event: Event, now: int, needed: object) -> None:
        """By exact type, as `TurnTrace.observe` keeps them (a class pattern is an `isinstance`)."""
        if type(event) is TurnStarted:
            self.attributes["docent.route"] = event.route
            if event.workflow:
                self.attributes["docent.workflow"] = event.workflow
        elif type(event) is LLMCompleted:
            self._llm(parent, event, needed, now - _ns(event.latency_ms), now)
        elif type(event) is LLMFailed:
            start = _ns(needed.at_ms) if type(needed) is LLMRequested else now
            self._llm(parent, event, needed, min(start, now), now)
        elif type(event) is ToolResult:
            self._tool(parent, event, now)
        elif type(event) is ApprovalRequested:
            self.events.append(
                tracing.event(self.tracer, "approval_requested", {"gen_ai.tool.name": event.tool}, now)
            )
        elif type(event) is ApprovalDecided or type(event) is ApprovalExpired:
            if type(needed) is ApprovalRequested:
                self._approval(parent, event, needed, now)
        elif type(event) in _TERMINAL and type(needed) is Totals:
            self._end(event, needed)

    def _retrieval(self, parent: SpanContext, search: Retrieval, end: int) -> None:
        start = end - _ns(search.latency_ms)
        retrieval = tracing.finished(
            self.tracer, parent, "retrieval", start_ns=start, end_ns=end,
            attributes={"docent.step": 0, "docent.retrieval.hits": search.hits}, into=self.spans,
        )  # fmt: skip
        if retrieval is not None:
            tracing.children(self.tracer, retrieval, stage_times(search, start), self.spans)

    def _llm(
        self, parent: SpanContext, event: LLMCompleted | LLMFailed, requested: object, start: int, end: int
    ) -> None:
        request = requested if type(requested) is LLMRequested else None
        model = request.model if request else getattr(event, "model", "")  # "chat <request model>"
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.system": GEN_AI_SYSTEM,
            "gen_ai.request.model": model,
            "docent.step": event.step,
        }
        if type(event) is LLMCompleted:
            attributes |= {
                "gen_ai.response.model": event.model,
                "gen_ai.usage.input_tokens": event.tokens_in,
                "gen_ai.usage.output_tokens": event.tokens_out,
                "gen_ai.response.finish_reasons": (event.finish_reason or "unknown",),
                "docent.llm.cost_usd": event.cost_usd,
                "docent.llm.first_token_ms": event.first_token_ms,
                "docent.llm.tool_calls": len(event.tool_calls),
            }
        if self.capture:
            if request is not None:
                attributes["gen_ai.input.messages"] = json.dumps(request.messages)
            if type(event) is LLMCompleted:
                attributes["gen_ai.output.messages"] = json.dumps(
                    [{"role": "assistant", "content": event.text}]
                )
        tracing.finished(
            self.tracer, parent, f"chat {model}".strip(), start_ns=start, end_ns=end,
            attributes=attributes, kind=SpanKind.CLIENT,
            error=event.code if type(event) is LLMFailed else None, into=self.spans,
        )  # fmt: skip

    def _tool(self, parent: SpanContext, event: ToolResult, end: int) -> None:
        tracing.finished(
            self.tracer, parent, f"execute_tool {event.tool}",
            start_ns=end - _ns(event.latency_ms), end_ns=end,
            attributes={
                "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": event.tool,
                "gen_ai.tool.call.id": event.call_id, "docent.step": event.step,
            },
            error=event.error.split(":", 1)[0] if event.error is not None else None, into=self.spans,
        )  # fmt: skip

    def _approval(
        self, parent: SpanContext, event: ApprovalDecided | ApprovalExpired, requested: ApprovalRequested,
        end: int,
    ) -> None:  # fmt: skip
        outcome = event.decision if type(event) is ApprovalDecided else "expired"
        tracing.finished(
            self.tracer, parent, f"approval {requested.tool}",
            start_ns=min(_ns(requested.at_ms), end), end_ns=end,
            attributes={
                "gen_ai.tool.name": requested.tool, "docent.approval.outcome": outcome,
                "docent.approval.room": requested.room, "docent.step": requested.step,
            },
            into=self.spans,
        )  # fmt: skip

    def _end(self, event: Event, totals: Totals) -> None:
        self.attributes |= {
            "docent.turn.outcome": totals.outcome,
            "gen_ai.usage.input_tokens": totals.tokens_in,
            "gen_ai.usage.output_tokens": totals.tokens_out,
            "docent.turn.cost_usd": totals.cost_usd,
        }
        # by exact type: a class pattern is an `isinstance`, slow on msgspec's misses
        if type(event) is AnswerCompleted:
            self.attributes["docent.answer.citations"] = len(event.citations)
            self.attributes["docent.answer.dropped_citations"] = len(event.dropped_citations)
            self.attributes["docent.answer.unsupported_spans"] = len(event.unsupported)
        elif type(event) is TurnFailed:
            self.error = event.code
        elif type(event) is LimitHit:
            self.attributes["docent.limit"] = event.limit


def stage_times(search: Retrieval, start_ns: int) -> list[tuple[str, int, int]]:
    """Each stage's (span name, start, end): at its offset from the search's start when the Searcher gave
    one, else right after the stage before it (they run one after the other)."""
    out: list[tuple[str, int, int]] = []
    cursor = start_ns
    for stage in STAGE_ORDER:
        took = search.timings_ms.get(stage)
        if took is None:
            continue
        offset = search.starts_ms.get(stage)
        begin = start_ns + _ns(offset) if offset is not None else cursor
        cursor = begin + _ns(took)
        out.append((STAGE_SPANS[stage], begin, cursor))
    return out
