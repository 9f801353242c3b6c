"""What a turn spends and how it went, per tenant, user and day (`store.usage`); the daily budgets.

    spend = Spend(settings)
    spend.observe(principal, conv, entry_id, event)   after each appended event: TurnStarted counts a
                                      turn, LLMCompleted its tokens and cost, for the turn's tenant and
                                      user, on the event's day; answers, retrievals and ratings count the
                                      tenant's quality signals (uncited answers, unsupported sentences, ...);
                                      once per log entry (store.usage.record_once_plan)
    spend.recover(principal, conv, tail)   at an activation's start: counts the entries of the log's tail
                                      (after the last snapshot) a killed worker appended but did not count
    spend.latency(principal, route, now_ms, first_token_ms=, answer_ms=)   at an answer: the ask's
                                      latencies, counted per hour (store.latency: the console's charts)
    spend.overspent(principal, now)   before a model call: the spent budget (store.budgets.Overspend) when
                                      the tenant or the user is over one; None (and no read) without budgets

A failed record (Redis unreachable) is logged and the turn goes on: accounting never breaks a turn. A
snapshot is saved only after the records of the events it covers, so an entry appended and not counted is
always in the tail the next activation folds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache

from index.types import Principal
from store.budgets import Overspend, load_budgets
from store.events import AnswerCompleted, Event, Feedback, LLMCompleted, RetrievalDone, TurnStarted
from store.exceptions import DocentError
from store.latency import ROUTES, LatencyLedger, hour_of
from store.scripts import id_tuple
from store.settings import Settings
from store.usage import UsageLedger, day_of

log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def _ledger(redis_url: str) -> UsageLedger:
    return UsageLedger.from_url(redis_url)


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
            return {"answers": 1, "uncited_answers": uncited, "unsupported_sentences": len(event.unsupported)}
        case RetrievalDone():
            return {"retrievals": 1, "no_passage_retrievals": 0 if event.chunk_ids else 1}
        case Feedback():
            return {f"feedback_{event.rating}": 1}
        case _:
            return {}


class Spend:
    def __init__(self, settings: Settings) -> None:
        self.ledger = _ledger(settings.redis_url) if settings.redis_url else None
        self.latencies = _latencies(settings.redis_url) if settings.redis_url else None
        self.budgets = load_budgets(settings)

    def observe(self, principal: Principal, conversation: str, entry_id: str, event: Event) -> None:
        if self.ledger is None:
            return
        amounts = counted(event)
        if not amounts:
            return
        tenant, user = principal.tenant, principal.user
        try:
            self.ledger.record_once(tenant, user, day_of(event.at_ms), conversation, entry_id, **amounts)
        except DocentError as exc:
            log.warning("usage of %s/%s not recorded: %s", tenant, user, exc.code)

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
        for entry_id, event in missed:
            self.observe(principal, conversation, entry_id, event)
        if missed:
            log.info("conversation %s: usage of %d entries counted on recovery", conversation, len(missed))
        return len(missed)

    def latency(
        self, principal: Principal, route: str, now_ms: int, *, first_token_ms: float | None, answer_ms: float
    ) -> None:
        if self.latencies is None or route not in ROUTES:
            return
        try:
            self.latencies.record(
                principal.tenant, route, hour_of(now_ms), first_token=first_token_ms, answer=answer_ms
            )
        except DocentError as exc:
            log.warning("latency of %s not recorded: %s", principal.tenant, exc.code)

    def overspent(self, principal: Principal, now_ms: int) -> Overspend | None:
        if self.budgets is None or self.ledger is None:
            return None
        spending = self.ledger.spending(principal.tenant, principal.user, now_ms)
        return self.budgets.overspent(principal.tenant, spending, now_ms)
