"""What a turn spends and how it went, per tenant, user and day (`store.usage`); the daily budgets.

    spend = Spend(settings)
    spend.observe(principal, event)   after each appended event: TurnStarted counts a turn, LLMCompleted
                                      its tokens and cost, for the turn's tenant and user, on the event's
                                      day; answers, retrievals and ratings count the tenant's quality
                                      signals (uncited answers, unsupported sentences, ...)
    spend.overspent(principal, now)   before a model call: the spent budget (store.budgets.Overspend) when
                                      the tenant or the user is over one; None (and no read) without budgets

A failed record (Redis unreachable) is logged and the turn goes on: accounting never breaks a turn.
"""

from __future__ import annotations

import logging
from functools import lru_cache

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
from store.settings import Settings
from store.usage import UsageLedger, day_of

log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def _ledger(redis_url: str) -> UsageLedger:
    return UsageLedger.from_url(redis_url)


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
        case RetrievalDone() if not event.chunk_ids:
            return {"no_passage_retrievals": 1}
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
        self.budgets = load_budgets(settings)

    def observe(self, principal: Principal, event: Event) -> None:
        if self.ledger is None:
            return
        amounts = counted(event)
        if not amounts:
            return
        tenant, user = principal.tenant, principal.user
        try:
            self.ledger.record(tenant, user, day_of(event.at_ms), **amounts)
        except DocentError as exc:
            log.warning("usage of %s/%s not recorded: %s", tenant, user, exc.code)

    def overspent(self, principal: Principal, now_ms: int) -> Overspend | None:
        if self.budgets is None or self.ledger is None:
            return None
        spending = self.ledger.spending(principal.tenant, principal.user, now_ms)
        return self.budgets.overspent(principal.tenant, spending, now_ms)
