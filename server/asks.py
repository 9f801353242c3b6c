"""One ask into a conversation, the same for every interface (`/ws/chat`, `/v1/chat/completions`).

    await submit_ask(services, meta, principal, text, mode, client_message_id, filters=None)

The caller has already checked that `principal` owns `meta`. The text is checked (not empty, at most
`max_question_chars`), the ask bucket is taken, the budgets are checked (`store.budgets`: over one,
`budget_exceeded` and nothing is written), the first ask creates the conversation (`recorded=True`: an
earlier ask on the same socket wrote it, and the idempotent record is not written again: one round trip
less per ask), and the user message goes
to the actor's inbox (deduplicated by `client_message_id`) with a wake-up, carrying the `ask` span's
`traceparent` when tracing is on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from opentelemetry.trace import SpanKind

from server.auth import Principal
from store import tracing
from store.budgets import load_budgets
from store.clock import now_ms
from store.conversations import ConversationMeta
from store.events import Mode, UserMessage
from store.exceptions import FrameError
from store.metadata import SearchFilters
from store.usage import AsyncUsageLedger

if TYPE_CHECKING:
    from server.services import Services


def checked_text(text: str, max_chars: int) -> str:
    stripped = text.strip()
    if not stripped:
        raise FrameError("text is empty")
    if len(text) > max_chars:
        raise FrameError(f"text is longer than {max_chars} characters")
    return stripped


async def submit_ask(
    services: Services,
    meta: ConversationMeta,
    me: Principal,
    text: str,
    mode: Mode,
    client_message_id: str,
    *,
    no_cache: bool = False,
    filters: SearchFilters | None = None,
    recorded: bool = False,
) -> None:
    text = checked_text(text, services.settings.max_question_chars)
    await services.limits.check(me, "ask")
    await check_budget(services, me)
    with ask_span(meta.id, me, mode) as traceparent:
        item = UserMessage(
            text=text, mode=mode, user=me.user, tenant=me.tenant, groups=me.groups,
            client_message_id=client_message_id, at_ms=now_ms(), no_cache=no_cache,
            filters=None if filters is None or filters.is_empty() else filters, traceparent=traceparent,
        )  # fmt: skip
        if not recorded:
            await services.conversations.record_ask(meta, text)  # the first ask creates the conversation
        await services.dispatcher.submit(meta.id, item, dedup_id=client_message_id)


async def check_budget(services: Services, me: Principal) -> None:
    """BudgetExceeded (with retry_after_ms) when the tenant or the user has spent a daily budget."""
    budgets = load_budgets(services.settings)
    if budgets is None:
        return
    now = now_ms()
    spending = await AsyncUsageLedger(services.redis).spending(me.tenant, me.user, now)
    over = budgets.overspent(me.tenant, spending, now)
    if over is not None:
        raise over.error()


@contextlib.contextmanager
def ask_span(conversation_id: str, me: Principal, mode: Mode) -> Iterator[str]:
    """The web's `ask` span (tracing on): yields its `traceparent`, the parent of the worker's turn span."""
    tracer = tracing.tracer()
    if tracer is None:
        yield ""
        return
    attributes = {"docent.conversation.id": conversation_id, "docent.tenant": me.tenant, "docent.mode": mode}
    with tracer.start_as_current_span("ask", kind=SpanKind.PRODUCER, attributes=attributes) as span:
        yield tracing.traceparent(span)
