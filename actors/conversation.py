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
lapsed) stops the activation at once with no further side effect. A `LeaseKeeper` (store.lease_keeper,
one renewal thread per process) renews the lease while long steps run. Caps (`settings.max_steps`,
`max_run_tokens`, `max_run_cost_usd`, `max_run_seconds`) end the turn with a `LimitHit` event (a hand-off
to a human), never a loop.

Prompt injection: the tools a run may use are fixed by code from the route (`AGENT_TOOLS`, plus the tools of
the MCP servers configuration names, `DOCENT_MCP_SERVERS_PATH`; none for Q&A);
risk and approval needs come from `actors.tools.policy`; retrieved passages and tool results reach the model
fenced as untrusted data (`fence_data`). Nothing the model or a document says changes what may run.

Modules: what an activation holds and how it writes is `actors.activation`; the steps are
`actors.qa_steps` (retrieval, the answer cache), `actors.model_step`, `actors.tool_steps` (intents,
effects, approvals) and `actors.answer_step`. Prompts are built by `actors.prompts`, citations by
`actors.sources` (from typed tool payloads, never from text); the process-wide runtime (clients, models,
the crash hook) is `actors.runtime`.

Models and indexes load lazily on the first message that needs them, never at import.
"""

from __future__ import annotations

import logging

import dramatiq
import msgspec

from actors import answer_step, model_step, qa_steps, tool_steps
from actors.activation import AGENT_TOOLS, REASON_CHARS, ActivationCore, LeaseLost
from actors.broker import CONVERSATION_QUEUE, setup_broker
from actors.plan import (
    Action,
    AwaitApproval,
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
from actors.runtime import Runtime, runtime
from actors.state import ConversationState, fold, load_state
from store.blocking import one_job_loop
from store.events import Event, LimitHit, ToolResult, TurnFailed, TurnStarted
from store.exceptions import LeaseHeld, LogError, StaleEpoch
from store.lease_keeper import LeaseKeeper
from store.log import Snapshot
from store.log_open import open_activation
from store.retry import RetryPolicy

__all__ = ["AGENT_TOOLS", "Activation", "activate", "advance", "load"]

log = logging.getLogger(__name__)

ACTOR_NAME = "advance"
LEASE_RETRY = RetryPolicy(max_retries=0, first_s=0.1, max_s=1.0)  # wait for a held lease, within these
MAX_ACTIONS_PER_ACTIVATION = 1_000  # a safety net: every action appends, so the plan always progresses
ACTOR_TIME_LIMIT_MS = 3_600_000  # the turn is capped by max_run_seconds between steps; this is the backstop
ACTOR_RETRY = RetryPolicy(max_retries=20, first_s=0.1, max_s=5.0)


# ---- one activation -------------------------------------------------------------------------------------


class Activation(ActivationCore):
    """The loop: the plan's next action, performed by its step module, until idle or waiting for a human."""

    async def run(self) -> None:
        caps = self.rt.caps()
        for _ in range(MAX_ACTIONS_PER_ACTIVATION):
            self.check_lease()
            self.pull_inbox()
            await self.offer_mcp_tools()
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
        self.flush()  # the closing snapshot (`closing_snapshot`) is saved with the release
        self.replicated()  # the last steps' results are on the replicas before the lease is released

    async def perform(self, action: Action) -> None:
        match action:
            case StartTurn(route=route, reason=reason, workflow=workflow):
                self.emit([TurnStarted(route=route, reason=reason, workflow=workflow)], defer=True)
            case Retrieve(query=query):
                await qa_steps.retrieve(self, query)
            case CallLLM(step=step):
                await model_step.call_llm(self, step)
            case RunTool():
                await tool_steps.run_tool(self, action)
            case RejectTool(step=step, call=call, error=error):
                self.emit(
                    [ToolResult(step=step, call_id=call.id, tool=call.name, idempotency_key="", error=error)]
                )
            case RequestApproval():
                tool_steps.request_approval(self, action)
            case Finish(text=text):
                await answer_step.finish(self, text)
            case Fail(code=code, message=message):
                self.emit([TurnFailed(code=code, message=message)])
            case Limit(limit=limit, value=value, cap=cap):
                self.emit([LimitHit(limit=limit, value=float(value), cap=float(cap), handed_off=True)])


def load(rt: Runtime, conv_id: str) -> ConversationState:
    """The folded state: the latest snapshot plus the events after it."""
    return load_with_tail(rt, conv_id)[0]


def load_with_tail(rt: Runtime, conv_id: str) -> tuple[ConversationState, list[tuple[str, Event]]]:
    """The folded state, and the entries folded after the snapshot (what usage recovery looks at)."""
    return _folded(rt, conv_id, *rt.log.read_from_snapshot(conv_id))


def _folded(
    rt: Runtime, conv_id: str, snapshot: Snapshot | None, tail: list[tuple[str, Event]]
) -> tuple[ConversationState, list[tuple[str, Event]]]:
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
    return state, tail


def activate(conv_id: str, rt: Runtime | None = None) -> str:
    """One activation of the conversation's actor. Returns what happened: "idle", "done", "held", "stale"."""
    rt = rt or runtime()
    try:  # the lease, the snapshot, the log after it and the inbox, in one call (store.log_open)
        opened = open_activation(rt.log, conv_id, rt.owner(), rt.settings.lease_ms)
    except LeaseHeld as held:
        expires = held.details.get("expires_at_ms")
        wait_s = (expires - rt.clock()) / 1000 if isinstance(expires, int) else 0.0
        advance.send_with_options(args=(conv_id,), delay=round(LEASE_RETRY.bounded_s(wait_s) * 1000))
        return "held"
    if opened is None:
        return "idle"  # unknown conversation: nothing to do, nothing written
    lease = opened.lease
    state, tail = _folded(rt, conv_id, opened.snapshot, opened.tail)
    activation = Activation(rt, conv_id, lease, state)
    activation.prefetch_inbox(opened.inbox_cursor, opened.inbox)
    activation.recover_usage(tail)
    stale = False
    try:
        with LeaseKeeper(rt.log, lease) as keeper, one_job_loop():  # this thread only waits for its loop
            activation.keeper = keeper
            rt.loop().run_until_complete(_guarded(activation))
    except LeaseLost:
        stale = True
        log.warning(
            "conversation %s: lease epoch %d lost; stopped without further writes", conv_id, lease.epoch
        )
        _wake_after_a_lost_lease(rt, conv_id)
    finally:
        activation.trace.close()
        if not stale and not _close(rt, activation):
            stale = True
            _wake_after_a_lost_lease(rt, conv_id)
    return "stale" if stale else "done"


def _wake_after_a_lost_lease(rt: Runtime, conv_id: str) -> None:
    """The conversation is looked at again once a lease would have lapsed: a turn left unfinished by the
    lost lease, and an ask posted while this activation held it (its poster sent no wake-up: the holder's
    close would have, server/dispatch.py). Lost to another worker: that one carries on, and this wake-up
    finds its lease held or nothing to do. Lost to a lapse, or to a Redis failover that dropped this
    activation's last writes (replication is asynchronous): nobody holds the conversation, and without
    this wake-up the turn, or the ask, would wait for the user's next message."""
    advance.send_with_options(args=(conv_id,), delay=rt.settings.lease_ms)


def _close(rt: Runtime, activation: Activation) -> bool:
    """Save the closing snapshot and release the lease in one call; wake the actor again for an ask posted
    after this activation last looked at the inbox (its own wake-up found the lease held and waits out the
    retry delay, up to a second): only an entry newer than all it saw counts, so a message waiting for a
    human never loops. False when the snapshot was refused (the lease was lost)."""
    conv_id = activation.conv_id
    activation.count_usage()  # before the closing snapshot: it covers counted entries only
    try:
        closed = rt.log.close_lease(
            activation.lease, snapshot=activation.closing_snapshot(), inbox_seen=activation.inbox_seen
        )
    except StaleEpoch:
        log.warning("conversation %s: lease epoch %d lost at the end", conv_id, activation.lease.epoch)
        return False
    except LogError:
        log.warning("conversation %s: could not release the lease (it will expire)", conv_id)
        _wake_after_a_lost_lease(rt, conv_id)  # an ask posted meanwhile was not seen (raises: a retry)
        return True
    if closed.newer_inbox:
        advance.send(conv_id)
    return True


async def _guarded(activation: Activation) -> None:
    try:
        await activation.run()
    except (LeaseLost, LogError):
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
