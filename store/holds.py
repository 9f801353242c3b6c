"""Budget holds: what the model calls in flight may spend, counted against the budgets until they settle.

    usage:{<tenant>}:holds   sorted set: `<hold id>\\t<user>\\t<tokens>\\t<cost>` scored by its expiry (ms)

Without holds, N concurrent asks of one user all read the same spending under the budget and all call the
model: the budget is overshot by N calls. With them, a call first places its hold (its estimate), then
reads the spending plus every other live hold: of two concurrent calls the later reader always sees the
earlier one's hold, so every admitted call was checked against all the calls admitted before it, and the
day ends at most one call's estimate past a budget (when no call spends more than its estimate). A hold
is removed when its call settles (`LLMCompleted` counted, or `LLMFailed`); a killed worker's hold expires
after `HOLD_TTL_MS`.

    place_plan(tenant, user, hold_id, tokens, cost_usd, now_ms) -> member
    held_plan(tenant, user, now_ms, before=member) -> Held (the tenant's and the user's earlier live holds)
    release_plan(tenant, member)
    Holds (blocking: the workers) runs them
"""

from __future__ import annotations

from functools import partial
from typing import Any

import msgspec
import redis

from store.exceptions import Unavailable
from store.redis import sync_client
from store.scripts import Batch, Call, Eval, Plan, SyncRunner, key_part, lua, text

HOLD_TTL_MS = 10 * 60_000  # longer than any model call (the LLM timeout and its retries)


class Held(msgspec.Struct, frozen=True, kw_only=True):
    tenant_tokens: int = 0
    tenant_cost_usd: float = 0.0
    user_tokens: int = 0
    user_cost_usd: float = 0.0


def holds_key(tenant: str) -> str:
    return f"usage:{{{key_part(tenant, 'tenant')}}}:holds"


def member_of(hold_id: str, user: str, tokens: int, cost_usd: float) -> str:
    return f"{hold_id}\t{user}\t{int(tokens)}\t{float(cost_usd)!r}"


PLACE = lua("hold_place.lua")


def place_plan(tenant: str, user: str, hold_id: str, tokens: int, cost_usd: float, now_ms: int) -> Plan[str]:
    key = holds_key(tenant)
    args: list[str | int] = [now_ms + HOLD_TTL_MS, HOLD_TTL_MS, member_of(hold_id, user, tokens, cost_usd)]
    member = yield Eval(PLACE, [key, f"{key}:seq"], args)
    return text(member)


def held_plan(tenant: str, user: str, now_ms: int, before: str = "") -> Plan[Held]:
    """The live holds placed before hold `before` (every live hold without it)."""
    key = holds_key(tenant)

    def queue(pipe: Any) -> None:
        pipe.zremrangebyscore(key, "-inf", now_ms)  # expired: a killed worker's
        pipe.zrange(key, 0, -1)

    replies = yield Batch(queue, transaction=False)
    tenant_tokens = user_tokens = 0
    tenant_cost = user_cost = 0.0
    for raw in replies[1]:
        member = text(raw)
        if before and member >= before:  # numbered with 12 digits: text order is the line's order
            continue
        _, _, holder, tokens, cost = member.split("\t")
        tenant_tokens += int(tokens)
        tenant_cost += float(cost)
        if holder == user:
            user_tokens += int(tokens)
            user_cost += float(cost)
    return Held(tenant_tokens=tenant_tokens, tenant_cost_usd=tenant_cost, user_tokens=user_tokens,
                user_cost_usd=user_cost)  # fmt: skip


def release_plan(tenant: str, member: str) -> Plan[None]:
    yield Call(partial(_zrem, holds_key(tenant), member))


def _zrem(key: str, member: str, client: Any) -> Any:
    return client.zrem(key, member)


class Holds:
    """For the workers (blocking)."""

    def __init__(self, client: redis.Redis) -> None:
        self._run = SyncRunner(client, unavailable=Unavailable).run

    @classmethod
    def from_url(cls, url: str) -> Holds:
        return cls(sync_client(url))

    def place(self, tenant: str, user: str, hold_id: str, tokens: int, cost_usd: float, now_ms: int) -> str:
        return self._run(place_plan(tenant, user, hold_id, tokens, cost_usd, now_ms))

    def held(self, tenant: str, user: str, now_ms: int, before: str = "") -> Held:
        return self._run(held_plan(tenant, user, now_ms, before))

    def release(self, tenant: str, member: str) -> None:
        self._run(release_plan(tenant, member))
