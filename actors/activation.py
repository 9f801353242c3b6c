"""What one activation of a conversation's actor holds, and how it writes.

An `ActivationCore` owns the fenced lease, the folded state and this activation's working memory (the
retrieval it made, the attribution scorer of the answer streaming now, ask times for the metrics). Its
writes are the only writes of a turn:
- `emit` appends events (fenced by the lease's epoch) and folds them; every appended event also feeds the
  metrics, the turn's trace and the feedback loop, and its usage is held for `count_usage`: one usage
  script call per activation (at its close, before any snapshot, before a budget read), not one per append;
- `live` appends to the live stream only (token fragments, sentences attributed while streaming);
- `pull_inbox` moves what may enter the log now, recording the inbox cursor in the same append;
- `before_effect` (a model call, a tool call or an approval's ledger write calls it right before its
  effect, after the call's own `LLMRequested` / `ToolIntent`) and `replicated` (at the activation's end)
  wait, with `redis_wait_replicas` > 0, until the replicas have everything appended so far
  (store/wait.py): no effect runs on a write a failover could drop, and steps without an effect (a turn's
  start, its retrieval, the answer) pay no WAIT of their own.
A `StaleEpoch` from any of them becomes `LeaseLost`: the activation stops with no further side effect.

The steps a plan action turns into live beside it, one module per kind (`actors.qa_steps`,
`actors.model_step`, `actors.tool_steps`, `actors.answer_step`); the loop is `actors.conversation`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence

import msgspec

from actors import attribution, golden_feedback
from actors.llm.types import ToolSpec, tool_specs
from actors.plan import CallCheck
from actors.runtime import Runtime
from actors.spend import Spend
from actors.state import ConversationState, TurnState, dump_state, fold
from actors.tools.registry import Registry, args_to_builtins
from actors.turn_trace import TurnTrace
from actors.workflows import workflows_for
from actors.workflows.orchestrator import WORKFLOW_TOOLS
from index.types import Hit, Principal
from store import metrics
from store.events import (
    AnswerCompleted,
    ApprovalDecided,
    ApprovalExpired,
    Delta,
    Event,
    Feedback,
    LiveItem,
    LLMCompleted,
    SentenceAttributed,
    ToolCall,
    TurnCancelled,
    UserMessage,
)
from store.exceptions import StaleEpoch, ToolError
from store.lease_keeper import LeaseKeeper
from store.log import Lease, conv_keys, renew_plan
from store.log_append import append_seen
from store.scripts import id_tuple
from store.wait import ReplicaWait

log = logging.getLogger(__name__)

DEFAULT_TENANT = "default"
REASON_CHARS = 2_000

# An activation that ends this many events past the snapshot saves one (a Q&A turn appends 6), so the
# next one folds a short tail instead of re-decoding every event (prompts included) since the last one.
SNAPSHOT_TAIL_EVENTS = 6
INBOX_RECHECK_MS = 20  # between actions that appended nothing, how soon the inbox is read again
LiveOnly = Delta | SentenceAttributed  # what goes to the live stream only

# The tools an agent run may use: fixed here, by code. Risk and approvals come from the policy.
AGENT_TOOLS = ("search_knowledge_base", "read_document", "compare_documents", "send_email", "http_request")


class LeaseLost(Exception):
    """The lease is gone: stop now, write nothing more."""


def sha(*parts: object) -> str:
    return hashlib.sha256(msgspec.json.encode([str(p) for p in parts])).hexdigest()


def principal_of(question: UserMessage) -> Principal:
    return Principal(
        tenant=question.tenant or DEFAULT_TENANT,
        user=question.user or "anonymous",
        groups=tuple(question.groups),
    )


def replica_wait(rt: Runtime) -> ReplicaWait | None:
    replicas, timeout_ms = rt.settings.redis_wait_replicas, rt.settings.redis_wait_timeout_ms
    return ReplicaWait(rt.log.client, replicas, timeout_ms) if replicas else None


class ActivationCore:
    def __init__(self, rt: Runtime, conv_id: str, lease: Lease, state: ConversationState) -> None:
        self.rt = rt
        self.conv_id = conv_id
        self.lease = lease
        self.state = state
        self.keeper: LeaseKeeper | None = None
        self.snapshot_events = state.events
        self.hits: list[Hit] | None = None  # this activation's retrieval, to skip a re-search
        self.agent_tools = rt.registry.subset(AGENT_TOOLS)
        self._agent_specs: tuple[ToolSpec, ...] | None = None  # built on an agent turn's first model call
        self._mcp_offered = rt.mcp is None  # the configured MCP servers' tools join an agent turn's once
        self.flows = workflows_for(rt.settings)  # workflows beside the agent loop (actors.workflows)
        self.workflow_tools = rt.registry.subset(WORKFLOW_TOOLS)
        self._asked_ms: dict[int, int] = {}  # turn -> the web's ask time (the log stamps the move time)
        self._first_token_ms: dict[int, int] = {}  # turn -> ask to first streamed token (the first one timed)
        self.trace = TurnTrace(conv_id)  # OpenTelemetry spans from the appended events (off: inert)
        self.spend = Spend(rt.settings)  # usage per tenant / user / day, and the daily budgets
        self.scorer: attribution.Scorer | None = None  # the attribution of the answer streaming now
        self._inbox_cursor: str | None = None  # as read or moved under this lease (no one else moves it)
        self._pending: list[Event] = []  # folded, appended with the next write (`emit(defer=True)`)
        self._pending_cursor: str | None = None  # the inbox cursor the pending events move
        self._uncounted: list[tuple[str, Event]] = []  # appended, usage not yet counted (`count_usage`)
        self._uncounted_for: Principal | None = None  # whose turn they belong to
        self._durable_last: str | None = state.last_event_id if state.events else None  # the log's end
        self._appended_since_read = True  # since `pull_inbox` last read the inbox
        self._prefetched: list[tuple[str, Event]] | None = None  # read with the lease (`prefetch_inbox`)
        self._read_at = 0.0  # when it did (monotonic s)
        self._inbox_last: str | None = None  # the inbox's newest entry as the last append left it
        self.inbox_seen: str | None = None  # the newest inbox entry this activation has looked at
        self.replicas = replica_wait(rt)  # None: writes are acknowledged by the primary alone
        # Appended since the last `replicated()`; True at first: the log this activation folded may end in a
        # previous one's writes that no replica has yet (and the lease was just written).
        self._unreplicated = True

    # -- writing ------------------------------------------------------------------------------------------

    def check_lease(self) -> None:
        if self.keeper is not None and self.keeper.lost.is_set():
            raise LeaseLost()

    def emit(
        self,
        items: Sequence[Event],
        *,
        inbox_cursor: str | None = None,
        defer: bool = False,
        live_first: Sequence[LiveOnly] = (),
    ) -> None:
        """Append (fenced) and fold. `defer`: fold now, append with the next write (see `flush`).
        `live_first`: live-only items that go out just before `items`, in the same append (a model's last
        streamed text with its completion)."""
        now = self.rt.clock()
        turn = self.state.current.number if self.state.current else 0
        stamped = [msgspec.structs.replace(e, turn=e.turn or turn, at_ms=now) for e in items]
        if defer:
            self._defer(stamped, inbox_cursor, now)
            return
        pending = self._pending
        ids = self._append(stamped, live_first, inbox_cursor, live_first=True)
        written = list(zip(ids, [*pending, *stamped], strict=True))
        for entry_id, event in written[len(pending) :]:
            fold(self.state, entry_id, event)
            self._observe(event, now)
        self.state.last_event_id = self._durable_last or self.state.last_event_id
        self._count(written)

    def flush(self) -> None:
        """Append what `emit(defer=True)` folded and held: before any effect outside the log, any snapshot,
        and the end of the activation (the next emit or live append carries it anyway)."""
        if self._pending or self._pending_cursor is not None:
            self.emit([])

    def _defer(self, stamped: Sequence[Event], inbox_cursor: str | None, now: int) -> None:
        """Fold events that lead to no effect by themselves (a turn's start, its retrieval, a question moved
        from the inbox) and hold them for the next append: one script call for a step's events. A crash
        before that append loses them all, the inbox cursor with them, and the replay redoes them."""
        self._pending += stamped
        if inbox_cursor is not None:
            self._pending_cursor = inbox_cursor
        for event in stamped:
            fold(self.state, self.state.last_event_id, event)  # the entry id comes with the append
            self._observe(event, now)

    def _append(
        self,
        durable: Sequence[Event],
        live: Sequence[LiveOnly],
        inbox_cursor: str | None,
        *,
        live_first: bool = False,
    ) -> list[str]:
        """One fenced append of the held events, then `durable` and `live` (`live` before `durable` with
        `live_first`); the ids of the held and `durable` events, in order."""
        pending, cursor = self._pending, inbox_cursor or self._pending_cursor
        items: list[LiveItem] = [*pending, *live, *durable] if live_first else [*pending, *durable, *live]
        checked = bool(pending or durable)  # live-only appends never checked where the log ends
        expected = self._durable_last if checked else None
        try:
            ids, self._inbox_last = append_seen(
                self.rt.log, self.lease, items, expected_last_id=expected, inbox_cursor=cursor
            )
        except StaleEpoch:
            raise LeaseLost() from None
        self._pending, self._pending_cursor = [], None
        self._appended_since_read = True
        self._unreplicated = True
        start = len(pending) + len(live) if live_first else len(pending)
        durable_ids = [*ids[: len(pending)], *ids[start : start + len(durable)]]
        if checked:
            self._durable_last = durable_ids[-1]
        if cursor is not None:
            self._inbox_cursor = cursor
        return durable_ids

    def before_effect(self) -> None:
        """Right before an effect outside the log: nothing held, and (with `redis_wait_replicas` > 0) the
        replicas have every event appended so far, the effect's own request or intent included."""
        self.flush()
        self.replicated()

    def replicated(self) -> None:
        """Once this returns, `redis_wait_replicas` replicas have every event appended so
        far (one WAIT, however many events the step appended; store/wait.py). LogError when they do not in
        time (the broker retries the activation); LeaseLost when the lease is gone."""
        if self.replicas is None:
            return
        self.flush()  # with replicas to wait for, a step's held events are written (and waited for) too
        if not self._unreplicated:
            return
        try:
            self.replicas.run(conv_keys(self.conv_id).lease, renew_plan(self.lease, None))
        except StaleEpoch:
            raise LeaseLost() from None
        self._unreplicated = False

    def recover_usage(self, tail: Sequence[tuple[str, Event]]) -> None:
        """At the start: count the usage of the tail's entries a killed activation appended, not counted."""
        if self.state.current is not None:
            self.spend.recover(principal_of(self.state.current.question), self.conv_id, tail)

    def _count(self, entries: Sequence[tuple[str, Event]]) -> None:
        """Hold the usage of what one append wrote for `count_usage` (one script call for all of them)."""
        current = self.state.current
        if current is None:
            return
        if any(isinstance(event, LLMCompleted) for _, event in entries):
            self.rt.crash("usage_record")  # a kill here: appended, not counted (the next activation will)
        principal = principal_of(current.question)
        if principal != self._uncounted_for:
            self.count_usage()  # a turn of another user in this activation: counted under its own
        self._uncounted_for = principal
        self._uncounted += entries

    def count_usage(self) -> None:
        """Count the held usage in one go (`actors.spend`): before a snapshot (it covers counted entries
        only), before a budget is read, and as the activation closes. A kill before this leaves the
        entries in the log's tail, uncounted: the next activation counts them (`recover_usage`)."""
        entries, self._uncounted = self._uncounted, []
        if entries and self._uncounted_for is not None:
            self.spend.observe_entries(self._uncounted_for, self.conv_id, entries)  # and the latencies
        else:
            self.spend.send_latencies()

    def _observe(self, event: Event, now: int) -> None:
        """What an appended event feeds besides the log and usage: metrics, the trace, the feedback loop."""
        current = self.state.current
        asked = self._asked_ms.get(event.turn) or (current.started_ms if current else 0)
        route = (current.route or "") if current else ""
        metrics.observe_event(event, now_ms=now, asked_at_ms=asked, route=route)
        self.trace.observe(self.state, event)
        if isinstance(event, AnswerCompleted) and current is not None and asked:
            first, answer = self._first_token_ms.get(event.turn), max(0, now - asked)
            principal = principal_of(current.question)
            self.spend.latency(principal, route, now, first_token_ms=first, answer_ms=answer)
        if isinstance(event, Feedback):  # a down-voted answer: a golden-set candidate
            tenant = principal_of(current.question).tenant if current else DEFAULT_TENANT
            golden_feedback.propose(self.rt.log, self.rt.settings.redis_url, self.conv_id, tenant, event)

    async def delta(self, step: int, text: str) -> None:
        self.live([self.delta_item(step, text)])

    def delta_item(self, step: int, text: str) -> Delta:
        """A streamed fragment of the model's text, to append now (the turn's first one is timed)."""
        turn = self.state.current.number if self.state.current else 0
        item = Delta(step=step, text=text, turn=turn, at_ms=self.rt.clock())
        self._time_first_token(turn)
        return item

    def _time_first_token(self, turn: int) -> None:
        if turn not in self._first_token_ms and self.state.current is not None:
            asked = self._asked_ms.get(turn) or self.state.current.started_ms
            now = self.rt.clock()
            self._first_token_ms[turn] = max(0, now - asked)
            metrics.observe_first_token(self.state.current.route or "", now_ms=now, asked_at_ms=asked)

    def live(self, items: Sequence[LiveOnly]) -> None:
        """Append to the live stream only (fenced): token fragments, sentences attributed while streaming
        (after the held events, in the same append)."""
        self.check_lease()
        if not items:
            return
        pending = self._pending
        ids = self._append((), items, None)
        if pending:
            self.state.last_event_id = self._durable_last or self.state.last_event_id
            self._count(list(zip(ids, pending, strict=True)))

    def maybe_snapshot(self, force: bool = False) -> None:
        due = self.state.events - self.snapshot_events
        if self.state.events and (due >= self.rt.settings.snapshot_every_events or (force and due > 0)):
            self.flush()  # a snapshot covers appended events only
            self.count_usage()  # and counted ones
            try:
                self.rt.log.save_snapshot(self.lease, dump_state(self.state), self.state.last_event_id)
            except StaleEpoch:
                raise LeaseLost() from None
            self.snapshot_events = self.state.events

    def closing_snapshot(self) -> tuple[bytes, str] | None:
        """The snapshot to save as the activation ends: when it ends SNAPSHOT_TAIL_EVENTS or more events
        past the last one, and only of appended events (None while events are held)."""
        if self._pending or self._pending_cursor is not None or not self.state.events:
            return None
        if self.state.events - self.snapshot_events < SNAPSHOT_TAIL_EVENTS:
            return None
        return dump_state(self.state), self.state.last_event_id

    # -- the inbox ----------------------------------------------------------------------------------------

    def prefetch_inbox(self, cursor: str, entries: list[tuple[str, Event]]) -> None:
        """The inbox cursor and the entries after it, as the opening read found them (`store.log_open`):
        the first `pull_inbox` takes these instead of reading."""
        self._inbox_cursor, self._prefetched = cursor, entries

    def pull_inbox(self) -> bool:
        """Move what may enter the log now; True when the cursor moved."""
        after = self._pending_cursor or self._inbox_cursor  # what the held events move is taken already
        if self._prefetched is not None:
            entries, self._prefetched = self._prefetched, None
        elif after is None or self._inbox_due():
            if after is None:
                after = self._inbox_cursor = self.rt.log.inbox_cursor(self.conv_id)
            entries = self.rt.log.take_inbox(self.lease, after=after)
        else:
            return False
        self._appended_since_read, self._read_at = False, time.monotonic()
        if not entries:
            self.inbox_seen = self.inbox_seen or after
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
        questions_only = bool(moved) and all(isinstance(m, UserMessage) for m in moved)
        self.emit(moved, inbox_cursor=cursor, defer=questions_only)  # a question starts a turn: one append
        return True

    def _inbox_due(self) -> bool:
        """Whether the inbox is worth reading again: when an entry read earlier still waits (a question
        behind a busy turn); during a turn, after an append or INBOX_RECHECK_MS since the last read (between
        actions whose events are held for one append, a cancel waits at most that long). Once the turn has
        ended nothing is read: the closing call reports an entry newer than all this activation saw, and
        the actor is woken for it (`actors.conversation`). An append that found nothing new in the inbox
        counts as a read."""
        position, seen = self._pending_cursor or self._inbox_cursor, self.inbox_seen
        if seen is not None and position is not None and id_tuple(seen) > id_tuple(position):
            return True
        if not self.state.busy:
            return False
        if self._appended_since_read and self._append_saw_nothing_new(position):
            self._appended_since_read, self._read_at = False, time.monotonic()  # as good as a read
            return False
        return self._appended_since_read or time.monotonic() - self._read_at >= INBOX_RECHECK_MS / 1000

    def _append_saw_nothing_new(self, position: str | None) -> bool:
        """Whether the last append found the inbox holding nothing past `position` (store.log_append)."""
        last = self._inbox_last
        if not last or position is None:
            return False
        return id_tuple(last) <= id_tuple(position)

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

    # -- the turn -----------------------------------------------------------------------------------------

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

    async def offer_mcp_tools(self) -> None:
        """An agent turn's tools are `AGENT_TOOLS` plus the configured MCP servers' (listed and cached by
        `rt.mcp`; configuration, never the model, names the servers). Once per activation, agent turns."""
        current = self.state.current
        if self._mcp_offered or self.rt.mcp is None or current is None or current.route != "agent":
            return
        self._mcp_offered = True
        extra = await self.rt.mcp.tools()
        if extra:
            self.agent_tools = Registry((*self.agent_tools, *extra))
            self._agent_specs = None

    @property
    def agent_specs(self) -> tuple[ToolSpec, ...]:
        """The agent tools' specs for the model: built when an agent turn first needs them, never for Q&A."""
        if self._agent_specs is None:
            self._agent_specs = tool_specs(self.agent_tools.spec())
        return self._agent_specs

    def check_call(self, call: ToolCall) -> CallCheck:
        if call.name not in self.tools:
            return CallCheck(ok=False, error=f"tool {call.name!r} is not available to this run")
        try:
            tool, args = self.tools.parse(call.name, call.arguments, settings=self.rt.settings)
        except ToolError as exc:
            return CallCheck(ok=False, error=f"{exc.code}: {exc.message}")
        risk = self.rt.policy.risk(self.principal.tenant, tool, args)
        return CallCheck(ok=True, risk=risk, needs_approval=risk == "high", args=args_to_builtins(args))
