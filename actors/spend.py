"""What a turn spends and how it went, per tenant, user and day (`store.usage`); the daily budgets.

    spend = Spend(settings)
    spend.observe_entries(principal, conv, entries)   after each append, its [(entry_id, event)]: TurnStarted
                                      counts a turn, LLMCompleted its tokens and cost, for the turn's tenant
                                      and user, on the event's day; answers, retrievals and ratings count the
                                      tenant's quality signals (uncited answers, unsupported sentences, ...);
                                      once per log entry, one script call per append
                                      (store.usage.record_entries_plan)
    spend.recover(principal, conv, tail)   at an activation's start: counts the entries of the log's tail
                                      (after the last snapshot) a killed worker appended but did not count
    spend.latency(principal, route, now_ms, first_token_ms=, answer_ms=)   at an answer: the ask's
                                      latencies, counted per hour (store.latency: the console's charts),
                                      held until the next observe_entries sends them in the same round
                                      trip as the usage (store.scripts.EvalWith), or
    spend.send_latencies()            alone (an activation's close with no usage to count). A kill between
                                      the answer and its activation's close loses its latencies (they are
                                      the console's charts: never recovered from the log, never budgets)
    spend.overspent(principal, now, hold_id=, tokens=, cost_usd=)   before a model call: the spent budget
                                      (store.budgets.Overspend) when the tenant or the user is over one,
                                      counting the other calls in flight (store.holds); None (and no read)
                                      without budgets. Admitted, the call's hold stays until
    spend.settle(hold_id)             after the call (its usage counted, or failed)

A failed record (Redis unreachable) is logged and the turn goes on: accounting never breaks a turn. A
snapshot is saved only after the records of the events it covers, so an entry appended and not counted is
always in the tail the next activation folds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import msgspec

from index.types import Principal
from store.budgets import Overspend, load_budgets
from store.events import (
    AnswerCompleted,
    ApprovalDecided,
    ApprovalExpired,
    CacheHit,
    Event,
    Feedback,
    LimitHit,
    LLMCompleted,
    RetrievalDone,
    TurnStarted,
)
from store.exceptions import DocentError
from store.holds import Held, Holds
from store.latency import ROUTES, LatencyLedger, hour_of
from store.latency import record_commands as latency_commands
from store.scripts import id_tuple
from store.settings import Settings
from store.usage import Spending, Usage, UsageLedger, day_of

log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def _ledger(redis_url: str) -> UsageLedger:
    return UsageLedger.from_url(redis_url)


@lru_cache(maxsize=4)
def _holds(redis_url: str) -> Holds:
    return Holds.from_url(redis_url)


@lru_cache(maxsize=4)
def _latencies(redis_url: str) -> LatencyLedger:
    return LatencyLedger.from_url(redis_url)


def counted(event: Event) -> dict[str, int | float]:
    """What an appended event adds to its tenant's (and user's) day (store.usage FIELDS)."""
    match event:
        case TurnStarted():
            return {"turns": 1}
        case LLMCompleted():
            return {"tokens_in": event.tokens_in, "tokens_out": event.tokens_out, "cost_usd": event.cost_usd}
        case AnswerCompleted():
            uncited = 0 if event.citations else 1
            return {"answers": 1, "uncited_answers": uncited, "unsupported_sentences": len(event.unsupported),
                    "dropped_citations": len(event.dropped_citations)}  # fmt: skip
        case RetrievalDone():
            return {"retrievals": 1, "no_passage_retrievals": 0 if event.chunk_ids else 1}
        case Feedback():
            return {f"feedback_{event.rating}": 1}
        case ApprovalDecided():
            return {f"approvals_{event.decision}": 1}
        case ApprovalExpired():
            return {"approvals_expired": 1}
        case LimitHit() if event.limit != "budget":
            return {"runaway_turns": 1}
        case CacheHit():
            return {"cache_hits": 1}
        case _:
            return {}


class Spend:
    def __init__(self, settings: Settings) -> None:
        self.ledger = _ledger(settings.redis_url) if settings.redis_url else None
        self.latencies = _latencies(settings.redis_url) if settings.redis_url else None
        self.budgets = load_budgets(settings)
        self.holds = _holds(settings.redis_url) if settings.redis_url and self.budgets is not None else None
        self._placed: dict[str, tuple[str, str]] = {}  # hold id -> (tenant, member) of an admitted call
        # (tenant, route, hour, samples ms) of the answers timed since the last usage record
        self._latencies: list[tuple[str, str, str, dict[str, float | None]]] = []

    def observe(self, principal: Principal, conversation: str, entry_id: str, event: Event) -> None:
        self.observe_entries(principal, conversation, [(entry_id, event)])

    def observe_entries(
        self, principal: Principal, conversation: str, entries: Sequence[tuple[str, Event]]
    ) -> None:
        """Count the entries one append wrote (oldest first): one script call per day among them."""
        if self.ledger is None:
            return
        by_day: dict[str, list[tuple[str, dict[str, int | float]]]] = {}
        for entry_id, event in entries:
            amounts = counted(event)
            if amounts:
                by_day.setdefault(day_of(event.at_ms), []).append((entry_id, amounts))
        tenant, user = principal.tenant, principal.user
        for day, day_entries in by_day.items():
            also = self._held_latencies()
            try:
                self.ledger.record_entries(tenant, user, day, conversation, day_entries, also)
            except DocentError as exc:
                log.warning("usage of %s/%s not recorded: %s", tenant, user, exc.code)
        self.send_latencies()

    def recover(self, principal: Principal, conversation: str, tail: Sequence[tuple[str, Event]]) -> int:
        """Count the tail's entries newer than the conversation's usage cursor; how many were counted."""
        if self.ledger is None or not any(counted(event) for _, event in tail):
            return 0
        try:
            cursor = id_tuple(self.ledger.cursor(principal.tenant, conversation))
        except DocentError as exc:
            log.warning("usage cursor of %s not read: %s", conversation, exc.code)
            return 0
        missed = [(i, e) for i, e in tail if counted(e) and id_tuple(i) > cursor]
        self.observe_entries(principal, conversation, missed)
        if missed:
            log.info("conversation %s: usage of %d entries counted on recovery", conversation, len(missed))
        return len(missed)

    def latency(
        self, principal: Principal, route: str, now_ms: int, *, first_token_ms: float | None, answer_ms: float
    ) -> None:
        """Hold an answer's latencies for the next `observe_entries` (or `send_latencies`)."""
        if self.latencies is None or route not in ROUTES:
            return
        samples = {"first_token": first_token_ms, "answer": answer_ms}
        self._latencies.append((principal.tenant, route, hour_of(now_ms), samples))

    def send_latencies(self) -> None:
        """Record the held latencies now, one pipeline per answer (nothing to send them with)."""
        held, self._latencies = self._latencies, []
        if self.latencies is None:
            return
        for tenant, route, hour, samples in held:
            try:
                self.latencies.record(tenant, route, hour, **samples)
            except DocentError as exc:
                log.warning("latency of %s not recorded: %s", tenant, exc.code)

    def _held_latencies(self) -> Callable[[Any], None] | None:
        """The held latencies' writes as one pipeline queue (None: none held); no longer held."""
        queues = [latency_commands(*sample) for sample in self._latencies]
        self._latencies = []
        if not any(queues):
            return None

        def queue(pipe: Any) -> None:
            for one in queues:
                if one is not None:
                    one(pipe)

        return queue

    def overspent(
        self, principal: Principal, now_ms: int, *, hold_id: str = "", tokens: int = 0, cost_usd: float = 0.0
    ) -> Overspend | None:
        if self.budgets is None or self.ledger is None:
            return None
        tenant, user = principal.tenant, principal.user
        member = ""
        if hold_id and self.holds is not None:  # placed before the read: see store.holds
            member = self.holds.place(tenant, user, hold_id, tokens, cost_usd, now_ms)
        spending = self.ledger.spending(tenant, user, now_ms)
        if member and self.holds is not None:
            spending = with_holds(spending, self.holds.held(tenant, user, now_ms, before=member))
        over = self.budgets.overspent(tenant, spending, now_ms)
        if member:
            self._placed[hold_id] = (tenant, member)
            if over is not None:
                self.settle(hold_id)
        return over

    def settle(self, hold_id: str) -> None:
        """The call is over (its usage counted, or it failed): its hold goes."""
        placed = self._placed.pop(hold_id, None)
        if placed is None or self.holds is None:
            return
        try:
            self.holds.release(*placed)
        except DocentError as exc:
            log.warning("budget hold %s not released (it expires): %s", hold_id, exc.code)


def _plus(usage: Usage, tokens: int, cost_usd: float) -> Usage:
    return msgspec.structs.replace(
        usage, tokens_in=usage.tokens_in + tokens, cost_usd=usage.cost_usd + cost_usd
    )


def with_holds(spending: Spending, held: Held) -> Spending:
    """The spending as if the calls in flight placed before this one had spent their estimates."""
    return Spending(
        tenant_day=_plus(spending.tenant_day, held.tenant_tokens, held.tenant_cost_usd),
        tenant_month=_plus(spending.tenant_month, held.tenant_tokens, held.tenant_cost_usd),
        user_day=_plus(spending.user_day, held.user_tokens, held.user_cost_usd),
        user_month=_plus(spending.user_month, held.user_tokens, held.user_cost_usd),
    )
