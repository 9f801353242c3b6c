"""The conversation actor: `advance(conversation_id)` on the `conversation` queue.

One activation:
  1. take the conversation's fenced lease (`store.log`); if another worker holds it, send `advance` again
     after a short delay (nothing is lost: whatever woke us is still in the inbox) and end;
  2. fold the log into state (`actors.state`), starting from the latest snapshot;
  3. move inbox items into the log — the append records the inbox cursor atomically, so an item is moved
     exactly once. A user message waits in the inbox while a turn is in progress (approvals, cancels don't);
  4. loop `actors.plan.next_action` and perform each action, appending events before and after every
     effect, until the conversation is idle or waits for a human; then release the lease.

Replay is the same code path: a crash anywhere leaves a log whose fold says what the first unfinished step
is. A recorded `LLMCompleted` is reused (never requested again); a `ToolIntent` without a `ToolResult` is
re-issued with the same idempotency key; an `ApprovalRequested` is never asked twice (the ledger's create is
idempotent and the approval id is derived from the call).

Safety: every write is fenced by the lease's epoch; a `StaleEpoch` (another worker took over, or the lease
lapsed) stops the activation at once with no further side effect. A `LeaseKeeper` thread renews the lease
while long steps run. Caps (`settings.max_steps`, `max_run_tokens`, `max_run_cost_usd`, `max_run_seconds`)
end the turn with a `LimitHit` event (a hand-off to a human), never a loop.

Prompt injection: the tools a run may use are fixed by code from the route (`AGENT_TOOLS`; none for Q&A);
risk and approval needs come from `actors.tools.policy`; retrieved passages and tool results reach the model
fenced as untrusted data (`fence_data`). Nothing the model or a document says changes what may run.

Prompts are built by `actors.prompts`, citations by `actors.sources` (from typed tool payloads, never
from text); the process-wide runtime (clients, models, the crash hook) is `actors.runtime`.

Models and indexes load lazily on the first message that needs them, never at import.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import dramatiq
import msgspec

from actors import attribution, golden_feedback
from actors.answer_policy import CacheDecision
from actors.approval_request import approval_record, approval_requested, schedule_expiry
from actors.broker import CONVERSATION_QUEUE, setup_broker
from actors.llm.types import (
    ChatMessage,
    Completion,
    LLMBackend,
    ToolSpec,
    messages_to_builtins,
    prompt_hash,
    tool_specs,
)
from actors.plan import (
    REWRITE_STEP,
    Action,
    AwaitApproval,
    CallCheck,
    CallLLM,
    Fail,
    Finish,
    Idle,
    Limit,
    RejectTool,
    RequestApproval,
    Retrieve,
    RunTool,
    StartTurn,
    next_action,
)
from actors.prompts import agent_messages, qa_messages, rewrite_messages
from actors.runtime import Runtime, runtime
from actors.sources import agent_sources, qa_sources
from actors.spend import Spend
from actors.state import ConversationState, TurnState, dump_state, fold, load_state
from actors.tools.registry import (
    Registry,
    Tool,
    ToolContext,
    ToolOutput,
    args_to_builtins,
    idempotency_key,
)
from actors.turn_trace import TurnTrace
from actors.workflows import workflows_for
from actors.workflows.orchestrator import WORKFLOW_TOOLS
from index.types import Hit, Principal
from store import metrics
from store.events import (
    AnswerCompleted,
    ApprovalDecided,
    ApprovalExpired,
    CacheHit,
    Citation,
    Delta,
    Event,
    Feedback,
    LimitHit,
    LLMCompleted,
    LLMFailed,
    LLMRequested,
    RetrievalDone,
    SentenceAttributed,
    ToolCall,
    ToolIntent,
    ToolResult,
    TurnCancelled,
    TurnFailed,
    TurnStarted,
    UserMessage,
)
from store.exceptions import (
    DocentError,
    LeaseHeld,
    LLMError,
    LLMTimeout,
    LLMUnavailable,
    LogError,
    MalformedToolCall,
    StaleEpoch,
    ToolError,
)
from store.log import Lease, LeaseKeeper
from store.retry import RetryPolicy

log = logging.getLogger(__name__)

ACTOR_NAME = "advance"
LEASE_RETRY = RetryPolicy(max_retries=0, first_s=0.1, max_s=1.0)  # wait for a held lease, within these
# An activation that ends this many events past the snapshot saves one (a Q&A turn appends 6), so the
# next one folds a short tail instead of re-decoding every event (prompts included) since the last one.
SNAPSHOT_TAIL_EVENTS = 6
MAX_ACTIONS_PER_ACTIVATION = 1_000  # a safety net: every action appends, so the plan always progresses
LLM_RETRY = RetryPolicy(max_retries=0, first_s=0.2, max_s=3.0, factor=5.0)  # 0.2, 1, 3 s; the plan retries
REASON_CHARS = 2_000
ACTOR_TIME_LIMIT_MS = 3_600_000  # the turn is capped by max_run_seconds between steps; this is the backstop
ACTOR_RETRY = RetryPolicy(max_retries=20, first_s=0.1, max_s=5.0)
DEFAULT_TENANT = "default"

# The tools an agent run may use: fixed here, by code. Risk and approvals come from the policy.
AGENT_TOOLS = ("search_knowledge_base", "read_document", "compare_documents", "send_email", "http_request")


def _sha(*parts: object) -> str:
    return hashlib.sha256(msgspec.json.encode([str(p) for p in parts])).hexdigest()


def principal_of(question: UserMessage) -> Principal:
    return Principal(
        tenant=question.tenant or DEFAULT_TENANT,
        user=question.user or "anonymous",
        groups=tuple(question.groups),
    )


# ---- one activation -------------------------------------------------------------------------------------


class _Stop(Exception):
    """The lease is gone: stop now, write nothing more."""


class Activation:
    def __init__(self, rt: Runtime, conv_id: str, lease: Lease, state: ConversationState) -> None:
        self.rt = rt
        self.conv_id = conv_id
        self.lease = lease
        self.state = state
        self.keeper: LeaseKeeper | None = None
        self.snapshot_events = state.events
        self._hits: list[Hit] | None = None  # this activation's retrieval, to skip a re-search
        self.agent_tools = rt.registry.subset(AGENT_TOOLS)
        self._agent_specs: tuple[ToolSpec, ...] = tool_specs(self.agent_tools.spec())
        self.flows = workflows_for(rt.settings)  # workflows beside the agent loop (actors.workflows)
        self.workflow_tools = rt.registry.subset(WORKFLOW_TOOLS)
        self._asked_ms: dict[int, int] = {}  # turn -> the web's ask time (the log stamps the move time)
        self._streamed_turns: set[int] = set()  # turns whose first token was timed
        self.trace = TurnTrace(conv_id)  # OpenTelemetry spans from the appended events (off: inert)
        self.spend = Spend(rt.settings)  # usage per tenant / user / day, and the daily budgets
        self._scorer: attribution.Scorer | None = None  # the attribution of the answer streaming now
        self._inbox_cursor: str | None = None  # as read or moved under this lease (no one else moves it)
        self.inbox_seen: str | None = None  # the newest inbox entry this activation has looked at

    # -- writing ------------------------------------------------------------------------------------------

    def _check_lease(self) -> None:
        if self.keeper is not None and self.keeper.lost.is_set():
            raise _Stop()

    def emit(self, items: Sequence[Event], *, inbox_cursor: str | None = None) -> None:
        """Append (fenced) and fold."""
        now = self.rt.clock()
        turn = self.state.current.number if self.state.current else 0
        stamped = [msgspec.structs.replace(e, turn=e.turn or turn, at_ms=now) for e in items]
        expected = self.state.last_event_id if self.state.events else None
        try:
            ids = self.rt.log.append(
                self.lease, stamped, expected_last_id=expected, inbox_cursor=inbox_cursor
            )
        except StaleEpoch:
            raise _Stop() from None
        if inbox_cursor is not None:
            self._inbox_cursor = inbox_cursor
        for entry_id, event in zip(ids, stamped, strict=True):
            fold(self.state, entry_id, event)
        current = self.state.current
        for event in stamped:
            asked = self._asked_ms.get(event.turn) or (current.started_ms if current else 0)
            route = (current.route or "") if current else ""
            metrics.observe_event(event, now_ms=now, asked_at_ms=asked, route=route)
            self.trace.observe(self.state, event)
            if current is not None:
                self.spend.observe(principal_of(current.question), event)
            if isinstance(event, Feedback):  # a down-voted answer: a golden-set candidate
                tenant = principal_of(current.question).tenant if current else DEFAULT_TENANT
                golden_feedback.propose(self.rt.log, self.rt.settings.redis_url, self.conv_id, tenant, event)

    async def delta(self, step: int, text: str) -> None:
        turn = self.state.current.number if self.state.current else 0
        self.live([Delta(step=step, text=text, turn=turn, at_ms=self.rt.clock())])
        if turn not in self._streamed_turns and self.state.current is not None:
            self._streamed_turns.add(turn)
            asked = self._asked_ms.get(turn) or self.state.current.started_ms
            route = self.state.current.route or ""
            metrics.observe_first_token(route, now_ms=self.rt.clock(), asked_at_ms=asked)

    def live(self, items: Sequence[Delta | SentenceAttributed]) -> None:
        """Append to the live stream only (fenced): token fragments, sentences attributed while streaming."""
        self._check_lease()
        if not items:
            return
        try:
            self.rt.log.append(self.lease, items)
        except StaleEpoch:
            raise _Stop() from None

    def streaming_attribution(self, step: int) -> attribution.Streaming | None:
        """A Q&A answer's sentences attributed as they finish; its scorer then attributes the whole answer."""
        self._scorer = None
        if self.turn.route != "qa" or not self._hits or not attribution.enabled(self.rt.settings):
            return None
        passages = attribution.passage_texts(qa_sources(self._hits), _numbered(self._hits))
        self._scorer = attribution.Scorer(passages, self.rt.knowledge().embed, self.turn.question.text)
        turn = self.turn.number
        return attribution.Streaming(
            self._scorer,
            lambda mark: msgspec.structs.replace(mark, step=step, turn=turn, at_ms=self.rt.clock()),
        )

    def maybe_snapshot(self, force: bool = False) -> None:
        due = self.state.events - self.snapshot_events
        if self.state.events and (due >= self.rt.settings.snapshot_every_events or (force and due > 0)):
            try:
                self.rt.log.save_snapshot(self.lease, dump_state(self.state), self.state.last_event_id)
            except StaleEpoch:
                raise _Stop() from None
            self.snapshot_events = self.state.events

    # -- the inbox ----------------------------------------------------------------------------------------

    def pull_inbox(self) -> bool:
        """Move what may enter the log now; True when the cursor moved."""
        if self._inbox_cursor is None:
            self._inbox_cursor = self.rt.log.inbox_cursor(self.conv_id)
        entries = self.rt.log.take_inbox(self.lease, after=self._inbox_cursor)
        if not entries:
            self.inbox_seen = self.inbox_seen or self._inbox_cursor
            return False
        self.inbox_seen = entries[-1][0]
        busy, turns = self.state.busy, self.state.turns
        current = self.state.current.number if self.state.current else 0
        moved: list[Event] = []
        cursor: str | None = None
        for entry_id, item in entries:
            match item:
                case UserMessage():
                    if busy:
                        break  # waits until the turn in progress ends
                    turns += 1
                    current, busy = turns, True
                    self._asked_ms[turns] = item.at_ms
                    moved.append(msgspec.structs.replace(item, turn=turns))
                case TurnCancelled() if busy:
                    moved.append(msgspec.structs.replace(item, turn=current))
                    busy = False
                case ApprovalDecided() | ApprovalExpired() if self._first_outcome(item, moved):
                    moved.append(msgspec.structs.replace(item, turn=current))
                case Feedback() if 1 <= item.turn <= turns:  # its turn is the rated one's
                    moved.append(item)
                case _:
                    log.info(
                        "conversation %s: dropping inbox item %s (%s)",
                        self.conv_id,
                        entry_id,
                        type(item).__name__,
                    )
            cursor = entry_id
        if cursor is None:
            return False
        self.emit(moved, inbox_cursor=cursor)
        return True

    def _first_outcome(self, item: ApprovalDecided | ApprovalExpired, moved: list[Event]) -> bool:
        """At most one outcome per approval enters the log (timers and reviewers may both deliver one)."""
        turn = self.state.current
        approval = turn.approvals.get(item.approval_id) if turn else None
        if approval is not None and approval.status != "pending":
            return False
        return not any(
            isinstance(m, ApprovalDecided | ApprovalExpired) and m.approval_id == item.approval_id
            for m in moved
        )

    # -- the loop -----------------------------------------------------------------------------------------

    async def run(self) -> None:
        caps = self.rt.caps()
        for _ in range(MAX_ACTIONS_PER_ACTIVATION):
            self._check_lease()
            self.pull_inbox()
            action = next_action(
                self.state, caps, self.check_call, self.rt.clock(), self.flows, rewrite=self.rt.rewrites
            )
            if isinstance(action, Idle):
                if self.pull_inbox():
                    continue
                break
            if isinstance(action, AwaitApproval):
                break
            await self.perform(action)
            self.maybe_snapshot()
        else:
            self.emit([TurnFailed(code="internal", message="too many actions in one activation")])
        self.maybe_snapshot(force=self.state.events - self.snapshot_events >= SNAPSHOT_TAIL_EVENTS)

    async def perform(self, action: Action) -> None:
        match action:
            case StartTurn(route=route, reason=reason, workflow=workflow):
                self.emit([TurnStarted(route=route, reason=reason, workflow=workflow)])
            case Retrieve(query=query):
                await self.retrieve(query)
            case CallLLM(step=step):
                await self.call_llm(step)
            case RunTool():
                await self.run_tool(action)
            case RejectTool(step=step, call=call, error=error):
                self.emit(
                    [ToolResult(step=step, call_id=call.id, tool=call.name, idempotency_key="", error=error)]
                )
            case RequestApproval():
                self.request_approval(action)
            case Finish(text=text):
                await self.finish(text)
            case Fail(code=code, message=message):
                self.emit([TurnFailed(code=code, message=message)])
            case Limit(limit=limit, value=value, cap=cap):
                self.emit([LimitHit(limit=limit, value=float(value), cap=float(cap), handed_off=True)])

    @property
    def turn(self) -> TurnState:
        assert self.state.current is not None
        return self.state.current

    @property
    def principal(self) -> Principal:
        return principal_of(self.turn.question)

    # -- code decides about tool calls --------------------------------------------------------------------

    @property
    def tools(self) -> Registry:
        """The tools this turn's route may use: the agent's, or the workflows' (fixed by code)."""
        return self.workflow_tools if self.turn.route == "workflow" else self.agent_tools

    def check_call(self, call: ToolCall) -> CallCheck:
        if call.name not in self.tools:
            return CallCheck(ok=False, error=f"tool {call.name!r} is not available to this run")
        try:
            tool, args = self.tools.parse(call.name, call.arguments, settings=self.rt.settings)
        except ToolError as exc:
            return CallCheck(ok=False, error=f"{exc.code}: {exc.message}")
        risk = self.rt.policy.risk(self.principal.tenant, tool, args)
        return CallCheck(ok=True, risk=risk, needs_approval=risk == "high", args=args_to_builtins(args))

    # -- retrieval ----------------------------------------------------------------------------------------

    def cache_decision(self, query: str) -> CacheDecision:
        turn = self.turn
        return self.rt.cache_policy().decide(turn.question, self.principal.tenant, turn.route, query)

    async def retrieve(self, query: str) -> None:
        decision = self.cache_decision(query)
        if decision.use and await self.answer_from_cache(query, decision):
            return
        started = time.perf_counter()
        try:
            result = await self.rt.knowledge().retrieve(
                query, self.principal, self.rt.settings.qa_top_k, self.turn.question.filters
            )
        except DocentError as exc:
            self.emit([TurnFailed(code="retrieval_failed", message=f"{exc.code}: {exc.message}")])
            return
        self._hits = list(result.hits)
        metrics.observe_retrieval(result.timings_ms)
        latency_ms = round((time.perf_counter() - started) * 1000, 3)
        self.trace.retrieval(self.state, result.timings_ms, latency_ms, len(result.hits))
        self.emit(
            [
                RetrievalDone(
                    step=0,
                    query=query,
                    chunk_ids=tuple(h.chunk_id for h in result.hits),
                    index_version=result.index_version,
                    latency_ms=latency_ms,
                    sources=tuple(qa_sources(result.hits)),
                )
            ]
        )

    async def answer_from_cache(self, query: str, decision: CacheDecision) -> bool:
        """Look the question up in the answer cache; True when a `CacheHit` was recorded (the answer)."""
        try:
            found = await self.rt.answers().lookup(query, self.principal, threshold=decision.threshold)
        except DocentError as exc:  # the cache is an optimisation: without it the turn is answered fresh
            log.warning("answer cache lookup skipped: %s: %s", exc.code, exc.message)
            metrics.observe_answer_cache("error")
            return False
        metrics.observe_answer_cache(found.outcome)
        record = found.record
        if found.outcome != "hit" or record is None:
            return False
        self.emit(
            [
                CacheHit(
                    entry_id=record.entry_id, similarity=found.similarity, cached_question=record.question,
                    index_version=record.index_version, chunk_ids=record.chunk_ids, text=record.text,
                    sources=record.sources, unsupported=record.unsupported, created_ms=record.created_ms,
                    latency_ms=found.latency_ms,
                )
            ]
        )  # fmt: skip
        return True

    async def qa_hits(self) -> list[Hit]:
        retrieval = self.turn.retrieval
        if retrieval is None or not retrieval.chunk_ids:
            return []
        if self._hits is None or [h.chunk_id for h in self._hits] != list(retrieval.chunk_ids):
            self._hits = await self.rt.knowledge().recall(
                retrieval.query, self.principal, retrieval.chunk_ids, self.turn.question.filters
            )
        return self._hits

    # -- the model ----------------------------------------------------------------------------------------

    async def call_llm(self, step: int) -> None:
        over = self.spend.overspent(self.principal, self.rt.clock())
        if over is not None:  # a daily budget is spent: hand off before the model is called
            self.emit([LimitHit(limit="budget", value=over.used, cap=over.cap, handed_off=True)])
            return
        messages, tools = await self.prompt(step)
        backend = self.rt.llm()
        digest = prompt_hash(messages, tools)
        requested = LLMRequested(
            step=step, model=backend.model_name, prompt_hash=digest,
            messages=messages_to_builtins(messages), tools=tuple(t.name for t in tools),
        )  # fmt: skip
        self.emit([requested])
        attempt = self.turn.llm_failures.get(step, 0)
        request_id = _sha(self.conv_id, self.turn.number, step, attempt)[:32]

        streaming = self.streaming_attribution(step)

        async def on_delta(text: str) -> None:
            await self.delta(step, text)
            if streaming is not None:
                self.live(await streaming.feed(text))

        streamed = on_delta if step != REWRITE_STEP else None  # a rewritten query is not the answer
        try:
            completion = await backend.complete(
                messages, tools=tools, on_delta=streamed, request_id=request_id
            )
        except (_Stop, StaleEpoch):
            raise _Stop() from None
        except LLMError as exc:
            await self.llm_failed(step, exc, attempt)
            return
        self.rt.crash("llm_response")  # a crash here: the response is lost and the step is requested again
        self._check_lease()
        self.emit([self.completed(step, completion, digest, backend)])

    async def prompt(self, step: int) -> tuple[list[ChatMessage], tuple[ToolSpec, ...]]:
        turn = self.turn
        if turn.route == "qa" and step == REWRITE_STEP:
            return rewrite_messages(self.state.history, turn.question.text), ()
        if turn.route == "qa":
            return qa_messages(await self.qa_hits(), self.state.history, turn.question.text), ()
        if turn.route == "workflow":
            return self.flows.prompt(turn, step), ()  # the model only writes text here
        return agent_messages(turn, self.state.history, step), self._agent_specs

    async def llm_failed(self, step: int, exc: LLMError, attempt: int) -> None:
        """Malformed replies and lost transports are recoverable (a pause after lost ones); others end it."""
        recoverable = isinstance(exc, MalformedToolCall | LLMTimeout | LLMUnavailable)
        message = exc.message[:REASON_CHARS]
        failed = LLMFailed(step=step, code=exc.code, message=message, recoverable=recoverable)
        ended = [] if recoverable or step == REWRITE_STEP else [TurnFailed(code=exc.code, message=message)]
        self.emit([failed, *ended])
        if isinstance(exc, LLMTimeout | LLMUnavailable):
            await asyncio.sleep(LLM_RETRY.delay_s(attempt))

    def completed(self, step: int, completion: Completion, digest: str, backend: LLMBackend) -> LLMCompleted:
        return LLMCompleted(
            step=step,
            model=completion.model or backend.model_name,
            prompt_hash=digest,
            text=completion.text,
            tool_calls=completion.tool_calls if self.turn.route == "agent" else (),
            finish_reason=completion.finish_reason,
            tokens_in=completion.tokens_in,
            tokens_out=completion.tokens_out,
            cost_usd=backend.price(completion.tokens_in, completion.tokens_out),
            latency_ms=round(completion.latency_ms, 3),
            first_token_ms=round(completion.first_token_ms, 3),
        )

    # -- tools --------------------------------------------------------------------------------------------

    async def run_tool(self, action: RunTool) -> None:
        call = action.call
        tool, args = self.tools.parse(call.name, call.arguments, settings=self.rt.settings)
        key = self.intend(action, tool, args)
        self._check_lease()
        started = time.perf_counter()
        output, error = await self.effect(tool, args, key)
        self.rt.crash("tool_effect")  # a crash here: the effect happened, its result is not recorded
        result = ToolResult(
            step=action.step, call_id=call.id, tool=tool.name, idempotency_key=key,
            result=output.text if output else "", data=output.data if output else None, error=error,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
        )  # fmt: skip
        self.emit([result])

    def intend(self, action: RunTool, tool: Tool[Any], args: Any) -> str:
        """The call's idempotency key: the recorded intent's (a re-issue), else a new intent's."""
        turn = self.turn
        intent = turn.intents.get(action.call.id)
        if intent is not None:
            return intent.idempotency_key
        key = idempotency_key(self.conv_id, turn.number, action.step, tool.name, args)
        intent = ToolIntent(
            step=action.step, call_id=action.call.id, tool=tool.name, args=args_to_builtins(args),
            idempotency_key=key, risk=action.check.risk,
        )  # fmt: skip
        self.emit([intent])
        return key

    async def effect(self, tool: Tool[Any], args: Any, key: str) -> tuple[ToolOutput | None, str | None]:
        """Run the tool: (its output, None) or (None, the typed error as text)."""
        context = ToolContext(
            idempotency_key=key,
            principal=self.principal,
            settings=self.rt.settings,
            knowledge=self.rt.knowledge() if tool.needs_knowledge_base else None,
            conversation_id=self.conv_id,
            filters=self.turn.question.filters,
        )
        try:
            return await tool.run(args, context), None
        except DocentError as exc:  # ToolError included
            return None, f"{exc.code}: {exc.message}"

    def request_approval(self, action: RequestApproval) -> None:
        turn = self.turn
        approval_id = _sha(self.conv_id, turn.number, action.step, action.call.id)[:32]
        reason = (action.reason or turn.llm_completed[action.step].text)[:REASON_CHARS]
        record = approval_record(
            approval_id, self.conv_id, self.principal, self.rt.policy, action,
            reason=reason, now_ms=self.rt.clock(),
        )  # fmt: skip
        stored = self.rt.ledger.create(record)  # idempotent: a replay finds the first record
        self.emit([approval_requested(action, stored)])
        schedule_expiry(approval_id, self.conv_id, stored.expires_ms, self.rt.settings)

    # -- the answer ---------------------------------------------------------------------------------------

    async def finish(self, text: str) -> None:
        hit = self.turn.cache_hit
        if hit is not None:
            await self.finish_from_cache(hit)
            return
        if self.turn.route == "qa":
            sources = qa_sources(await self.qa_hits())
        elif self.turn.route == "workflow":
            sources = self.flows.sources(self.turn)
        else:
            sources = agent_sources(self.turn.results.values())
        sources = await self.readable(sources)  # the user must (still) be allowed to read every one cited
        passages = _numbered(self._hits or []) if self.turn.route == "qa" else {}
        attribute = attribution.enabled(self.rt.settings) and self.turn.route != "workflow"  # cited by code
        embed = self.rt.knowledge().embed if attribute else None
        question = self.turn.question.text
        answer = await attribution.final_answer(text, sources, passages, embed, question, self._scorer)
        self.emit([answer])
        await self.remember(answer)

    async def readable(self, sources: Sequence[Citation]) -> list[Citation]:
        """The sources whose documents the principal may (still) read."""
        if not sources:
            return []
        doc_ids = sorted({c.doc_id for c in sources})
        docs = await self.rt.knowledge().readable_documents(doc_ids, self.principal)
        return [c for c in sources if c.doc_id in docs]

    async def finish_from_cache(self, hit: CacheHit) -> None:
        """The cached answer, streamed and completed like a fresh one; its sources checked once more."""
        sources = await self.readable(hit.sources)
        await self.delta(0, hit.text)
        answer = await attribution.final_answer(hit.text, sources, {}, None)
        unsupported = hit.unsupported if answer.text == hit.text else ()
        self.emit([msgspec.structs.replace(answer, unsupported=unsupported)])

    async def remember(self, answer: AnswerCompleted) -> None:
        """Cache a fresh Q&A answer when the policy allows (a failure only costs the next hit)."""
        retrieval = self.turn.retrieval
        if self.turn.route != "qa" or retrieval is None or not self.cache_decision(retrieval.query).use:
            return
        try:
            await self.rt.answers().store_answer(
                retrieval.query, self.principal, retrieval.index_version, retrieval.chunk_ids, answer
            )
        except DocentError as exc:
            log.warning("answer not cached: %s: %s", exc.code, exc.message)


def _numbered(hits: Sequence[Hit]) -> dict[int, str]:
    """The passages' texts by their number in the prompt."""
    return {n: h.text for n, h in enumerate(hits, 1)}


# ---- activation entry -----------------------------------------------------------------------------------


def load(rt: Runtime, conv_id: str) -> ConversationState:
    """The folded state: the latest snapshot plus the events after it."""
    snapshot, tail = rt.log.read_from_snapshot(conv_id)
    state: ConversationState | None = None
    if snapshot is not None:
        try:
            state = load_state(snapshot.state)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("conversation %s: unreadable snapshot, replaying the whole log", conv_id)
            tail = rt.log.read(conv_id)
    if state is None:
        state = ConversationState(conversation_id=conv_id)
    for entry_id, event in tail:
        fold(state, entry_id, event)
    return state


def activate(conv_id: str, rt: Runtime | None = None) -> str:
    """One activation of the conversation's actor. Returns what happened: "idle", "done", "held", "stale"."""
    rt = rt or runtime()
    if rt.log.length(conv_id) == 0 and rt.log.inbox_length(conv_id) == 0:
        return "idle"  # unknown conversation: nothing to do, nothing written
    try:
        lease = rt.log.acquire(conv_id, rt.owner(), rt.settings.lease_ms)
    except LeaseHeld as held:
        expires = held.details.get("expires_at_ms")
        wait_s = (expires - rt.clock()) / 1000 if isinstance(expires, int) else 0.0
        advance.send_with_options(args=(conv_id,), delay=round(LEASE_RETRY.bounded_s(wait_s) * 1000))
        return "held"
    activation = Activation(rt, conv_id, lease, load(rt, conv_id))
    stale = False
    try:
        with LeaseKeeper(rt.log, lease) as keeper:
            activation.keeper = keeper
            rt.loop().run_until_complete(_guarded(activation))
    except _Stop:
        stale = True
        log.warning(
            "conversation %s: lease epoch %d lost; stopped without further writes", conv_id, lease.epoch
        )
    finally:
        activation.trace.close()
        if not stale:
            try:
                rt.log.release(lease)
                _wake_for_late_arrivals(rt, conv_id, activation.inbox_seen)
            except LogError:
                log.warning("conversation %s: could not release the lease (it will expire)", conv_id)
    return "stale" if stale else "done"


def _wake_for_late_arrivals(rt: Runtime, conv_id: str, seen: str | None) -> None:
    """An ask posted after this activation last looked at the inbox but before its release: its own wake-up
    found the lease held and waits out the retry delay (up to a second); this one runs it now. Only an
    entry newer than all this activation saw counts, so a message waiting for a human never loops."""
    if seen is not None and rt.log.inbox_after(conv_id, seen, count=1):
        advance.send(conv_id)


async def _guarded(activation: Activation) -> None:
    try:
        await activation.run()
    except (_Stop, LogError):
        raise  # stop, or let the broker retry the message when Redis is unreachable
    except Exception as exc:  # a bug in a step: end the turn with a typed event rather than retry forever
        log.exception("conversation %s: step failed", activation.conv_id)
        if activation.state.busy:
            activation.emit(
                [TurnFailed(code="internal", message=f"{type(exc).__name__}: {exc}"[:REASON_CHARS])]
            )


@dramatiq.actor(
    actor_name=ACTOR_NAME,
    queue_name=CONVERSATION_QUEUE,
    broker=setup_broker(),
    **ACTOR_RETRY.actor_options(),
    time_limit=ACTOR_TIME_LIMIT_MS,
)
def advance(conversation_id: str) -> None:
    activate(conversation_id)
