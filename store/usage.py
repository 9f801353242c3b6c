"""Token, cost and turn accounting per tenant, user and UTC day, in Redis counters.

    usage:{<tenant>}:<day>        hash: tokens_in, tokens_out, cost_usd, turns (the tenant's day), and the
                                  tenant's quality signals (QUALITY_FIELDS: answers, uncited answers, ...)
    usage:{<tenant>}:<day>:users  hash: `<user>:<field>` for the four spend fields, per user
    usage:{<tenant>}:<YYYY-MM>[:users]   the budgets' fields (MONTH_FIELDS: tokens, cost) per month (the
                                  monthly budgets; no turns: nothing reads them, two writes a turn fewer)
    usage:tenants:<day>           set: the tenants with usage that day (what GET /admin/usage lists)

    usage:{<tenant>}:cursor:<conv>  the newest log entry of the conversation whose usage is counted

`<day>` is `YYYY-MM-DD` (UTC). A record moves the tenant's and the user's figures in one MULTI (both keys
carry the tenant's hash tag: one Redis Cluster slot), so a reader never sees one without the other; every
key expires `RETENTION_DAYS` after its last write. The conversation actor records after it appends the
event that carries the usage (`LLMCompleted`, `TurnStarted`, ...), keyed by the event's log entry id
(`record_once_plan`: one Lua script checks and moves the conversation's cursor with the counters): a
worker killed between the append and the record leaves the entry uncounted, and the next activation
counts it when it replays the log's tail (`actors.spend.Spend.recover`); nothing is ever counted twice.

    record_plan(tenant, user, day, {"tokens_in": ..., "answers": 1, ...})
    record_once_plan(tenant, user, day, amounts, conversation, entry_id) -> bool (counted now)
    record_entries_plan(tenant, user, day, conversation, [(entry_id, amounts), ...], also=) -> how many
                                  counted (one script call for all the entries of an activation; `also`:
                                  other writes in the same round trip, the turn's latencies)
    totals_plan(tenant, user, day) -> (the tenant's Usage, the user's Usage)
    spending_plan(tenant, user, now_ms) -> Spending: the day and the month so far (what budgets check)
    report_plan(days, tenant=None, user=None, max_rows=...) -> Report
    UsageLedger (blocking: workers) / AsyncUsageLedger (the web process) run them
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import msgspec
import redis
import redis.asyncio as aredis

from store.exceptions import InputError, Unavailable
from store.redis import sync_client
from store.scripts import (
    AsyncRunner,
    Batch,
    Call,
    Eval,
    EvalWith,
    Plan,
    SyncRunner,
    key_part,
    lua,
    stream_id,
    text,
)

SPEND_FIELDS = ("tokens_in", "tokens_out", "cost_usd", "turns")  # per tenant and per user
# Quality signals, per tenant only (a user's answers are not graded here): answers, those citing nothing,
# citations dropped by validation, unsupported sentences (post-hoc attribution), Q&A retrievals with
# nothing readable, ratings, approvals by outcome (the pass rate), runs ended at a cap other than the
# budget (runaways), answers served from the answer cache; Q&A retrievals in all (the no-passages rate's
# denominator).
QUALITY_FIELDS = (
    "answers", "uncited_answers", "dropped_citations", "unsupported_sentences", "no_passage_retrievals",
    "feedback_up", "feedback_down", "approvals_approved", "approvals_denied", "approvals_expired",
    "runaway_turns", "cache_hits", "retrievals",
)  # fmt: skip
FIELDS = SPEND_FIELDS + QUALITY_FIELDS
MONTH_FIELDS = ("tokens_in", "tokens_out", "cost_usd")  # what the monthly budgets check
RETENTION_DAYS = 400
RETENTION_S = RETENTION_DAYS * 86_400
MAX_REPORT_DAYS = 31
MAX_REPORT_ROWS = 5_000
USER_SCAN_COUNT = 500
DAY_MS = 86_400_000


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    turns: int = 0
    answers: int = 0
    uncited_answers: int = 0
    dropped_citations: int = 0
    unsupported_sentences: int = 0
    no_passage_retrievals: int = 0
    feedback_up: int = 0
    feedback_down: int = 0
    approvals_approved: int = 0
    approvals_denied: int = 0
    approvals_expired: int = 0
    runaway_turns: int = 0
    cache_hits: int = 0
    retrievals: int = 0

    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out

    @property
    def empty(self) -> bool:
        return not any(getattr(self, name) for name in FIELDS)


class UsageRow(Usage, frozen=True, kw_only=True):
    day: str
    tenant: str
    user: str  # "" for the tenant's total (the quality fields are the tenant's only)
    tokens: int = 0


class Spending(msgspec.Struct, frozen=True, kw_only=True):
    """What the budgets are checked against: the tenant's and the user's day and month so far."""

    tenant_day: Usage
    user_day: Usage
    tenant_month: Usage
    user_month: Usage


class Report(msgspec.Struct, frozen=True, kw_only=True):
    days: list[str]
    rows: list[UsageRow]
    truncated: bool = False  # more user rows than max_rows: ask for one tenant or one user


def day_of(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).date().isoformat()


def month_of(day: str) -> str:
    return day[:7]  # YYYY-MM


def ms_until_next_month(ms: int) -> int:
    today = dt.datetime.fromtimestamp(ms / 1000, dt.UTC).date()
    first = dt.date(today.year + today.month // 12, today.month % 12 + 1, 1)
    return int(dt.datetime(first.year, first.month, 1, tzinfo=dt.UTC).timestamp() * 1000) - ms


def ms_until_next_day(ms: int) -> int:
    return DAY_MS - ms % DAY_MS


def days_between(first: str, last: str) -> list[str]:
    """Every day from `first` to `last` (YYYY-MM-DD, both included), at most MAX_REPORT_DAYS."""
    try:
        start, end = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    except ValueError:
        raise InputError("days are YYYY-MM-DD", field="from") from None
    count = (end - start).days + 1
    if not 1 <= count <= MAX_REPORT_DAYS:
        raise InputError(f"from..to must span 1 to {MAX_REPORT_DAYS} days", field="to")
    return [(start + dt.timedelta(days=n)).isoformat() for n in range(count)]


def usage_key(tenant: str, day: str) -> str:
    return f"usage:{{{key_part(tenant, 'tenant')}}}:{day}"


def users_key(tenant: str, day: str) -> str:
    return f"{usage_key(tenant, day)}:users"


def tenants_key(day: str) -> str:
    return f"usage:tenants:{day}"


def _usage(values: list[Any], fields: tuple[str, ...] = FIELDS) -> Usage:
    parsed: dict[str, int | float] = {}
    for name, value in zip(fields, values, strict=True):
        if value is not None:
            parsed[name] = float(text(value)) if name == "cost_usd" else int(text(value))
    return Usage(**parsed)  # type: ignore[arg-type]


def record_plan(tenant: str, user: str, day: str, amounts: Mapping[str, int | float]) -> Plan[None]:
    """Add `amounts` (names from FIELDS) to the tenant's day, and the spend ones to the user's day too."""
    unknown = set(amounts) - set(FIELDS)
    if unknown:
        raise InputError(f"unknown usage fields {sorted(unknown)}", field="amounts")
    increments = {name: value for name, value in amounts.items() if value and value > 0}
    if not increments:
        return
    key, per_user = usage_key(tenant, day), users_key(tenant, day)  # a user is a field name: any text

    month, month_users = usage_key(tenant, month_of(day)), users_key(tenant, month_of(day))

    def queue(pipe: Any) -> None:
        for name, value in increments.items():
            add = pipe.hincrbyfloat if name == "cost_usd" else pipe.hincrby
            add(key, name, value)
            if name in SPEND_FIELDS:  # the user's day, and both months (the monthly budgets)
                add(per_user, f"{user}:{name}", value)
            if name in MONTH_FIELDS:
                add(month, name, value)
                add(month_users, f"{user}:{name}", value)
        for written in (key, per_user, month, month_users):
            pipe.expire(written, RETENTION_S)

    yield Batch(queue)  # MULTI: the tenant's and the user's figures move together
    yield Batch(partial(_list_tenant, tenant, day), transaction=False)


RECORD_ONCE = lua("common.lua", "usage_record.lua")
CURSOR_TTL_S = 8 * 86_400  # a crashed activation's message is redelivered within minutes, not days
TENANT_RELIST_S = 60.0  # how often one process re-adds a tenant it counted to the day's tenant set
MAX_LISTED = 10_000  # (tenant, day) pairs one process remembers having listed


def cursor_key(tenant: str, conversation: str) -> str:
    return f"usage:{{{key_part(tenant, 'tenant')}}}:cursor:{key_part(conversation, 'conversation')}"


def record_once_plan(
    tenant: str, user: str, day: str, amounts: Mapping[str, int | float], conversation: str, entry_id: str
) -> Plan[bool]:
    """`record_plan` for the usage of log entry `entry_id` of `conversation`, unless that entry or a later
    one was counted already; True when counted now."""
    return bool((yield from record_entries_plan(tenant, user, day, conversation, [(entry_id, amounts)])))


def record_entries_plan(
    tenant: str,
    user: str,
    day: str,
    conversation: str,
    entries: Sequence[tuple[str, Mapping[str, int | float]]],
    list_tenant: bool = True,
    also: Callable[[Any], None] | None = None,
) -> Plan[int]:
    """`record_once_plan` for several log entries of one day (oldest first) in one script call: each is
    counted unless it, or a later entry, was counted already; how many were counted now. `list_tenant`:
    also add the tenant to the day's tenant set (False when this process did so moments ago). `also`:
    writes to send in the same round trip, after the script (`EvalWith`: a turn's latencies)."""
    month = month_of(day)
    keys = [usage_key(tenant, day), users_key(tenant, day), usage_key(tenant, month),
            users_key(tenant, month), cursor_key(tenant, conversation)]  # fmt: skip
    args: list[str | int | float] = [user, RETENTION_S, CURSOR_TTL_S]
    for entry_id, amounts in entries:
        unknown = set(amounts) - set(FIELDS)
        if unknown:
            raise InputError(f"unknown usage fields {sorted(unknown)}", field="amounts")
        triples: list[str | int | float] = []
        for name, value in amounts.items():
            if value and value > 0:
                triples += [name, repr(float(value)) if name == "cost_usd" else int(value),
                            _scope(name)]  # fmt: skip
        args += [stream_id(entry_id, "entry_id"), len(triples) // 3, *triples]
    if not entries:
        return 0
    if also is None:
        counted = int((yield Eval(RECORD_ONCE, keys, args)))
    else:
        counted = int((yield EvalWith(RECORD_ONCE, keys, args, also))[0])
    if counted and list_tenant:
        yield Batch(partial(_list_tenant, tenant, day), transaction=False)
    return counted


def _scope(name: str) -> str:
    """Where usage_record.lua adds a field: `m` the tenant's and the user's day and month, `d` their day
    only, `q` the tenant's day only."""
    return "m" if name in MONTH_FIELDS else "d" if name in SPEND_FIELDS else "q"


def _list_tenant(tenant: str, day: str, pipe: Any) -> None:
    pipe.sadd(tenants_key(day), tenant)
    pipe.expire(tenants_key(day), RETENTION_S)


def cursor_plan(tenant: str, conversation: str) -> Plan[str]:
    """The newest entry of the conversation counted for the tenant ("0-0": none)."""
    found = yield Call(partial(_get, cursor_key(tenant, conversation)))
    return text(found) if found is not None else "0-0"


def _get(key: str, client: Any) -> Any:
    return client.get(key)


def totals_plan(tenant: str, user: str, day: str) -> Plan[tuple[Usage, Usage]]:
    def queue(pipe: Any) -> None:
        pipe.hmget(usage_key(tenant, day), list(FIELDS))
        pipe.hmget(users_key(tenant, day), [f"{user}:{f}" for f in SPEND_FIELDS])

    replies = yield Batch(queue, transaction=False)
    return _usage(replies[0]), _usage(replies[1], SPEND_FIELDS)


def spending_plan(tenant: str, user: str, now_ms: int) -> Plan[Spending]:
    day = day_of(now_ms)
    fields = [f"{user}:{f}" for f in SPEND_FIELDS]

    def queue(pipe: Any) -> None:
        for period in (day, month_of(day)):
            pipe.hmget(usage_key(tenant, period), list(SPEND_FIELDS))
            pipe.hmget(users_key(tenant, period), fields)

    replies = yield Batch(queue, transaction=False)
    tenant_day, user_day, tenant_month, user_month = (_usage(r, SPEND_FIELDS) for r in replies)
    return Spending(
        tenant_day=tenant_day, user_day=user_day, tenant_month=tenant_month, user_month=user_month
    )


def _row(day: str, tenant: str, user: str, usage: Usage) -> UsageRow:
    fields = msgspec.structs.asdict(usage) | {"cost_usd": round(usage.cost_usd, 6)}
    return UsageRow(day=day, tenant=tenant, user=user, tokens=usage.tokens, **fields)


def _user_rows(day: str, tenant: str, fields: dict[Any, Any]) -> list[UsageRow]:
    by_user: dict[str, dict[str, Any]] = {}
    for name, value in fields.items():
        user, _, field = text(name).rpartition(":")
        by_user.setdefault(user, {})[field] = value
    return [
        _row(day, tenant, user, _usage([values.get(f) for f in SPEND_FIELDS], SPEND_FIELDS))
        for user, values in sorted(by_user.items())
    ]


def report_plan(
    days: list[str], tenant: str | None = None, user: str | None = None, max_rows: int = MAX_REPORT_ROWS
) -> Plan[Report]:
    """Per day: each tenant's total, then its users (one user with `user`), up to `max_rows` rows."""
    rows: list[UsageRow] = []
    truncated = False
    for day in days:
        if tenant is not None:
            tenants = [key_part(tenant, "tenant")]
        else:
            members = yield Call(partial(_members, tenants_key(day)))
            tenants = sorted(text(m) for m in members)
        for name in tenants:
            total, mine = yield from totals_plan(name, user or "-", day)
            if not total.empty:
                rows.append(_row(day, name, "", total))
            if user is not None:
                if not mine.empty:
                    rows.append(_row(day, name, user, mine))
                continue
            room = max(0, max_rows - len(rows))
            fields, more = yield from _scan_users(users_key(name, day), room * len(SPEND_FIELDS))
            user_rows = _user_rows(day, name, fields)
            truncated = truncated or more or len(user_rows) > room
            rows.extend(user_rows[:room])
    return Report(days=days, rows=rows, truncated=truncated)


def _members(key: str, client: Any) -> Any:
    return client.smembers(key)


def _hscan(key: str, cursor: int, client: Any) -> Any:
    return client.hscan(key, cursor, count=USER_SCAN_COUNT)


def _scan_users(key: str, max_fields: int) -> Plan[tuple[dict[Any, Any], bool]]:
    """At least `max_fields` fields of a users hash (HSCAN: never one huge reply); True if there are more."""
    fields: dict[Any, Any] = {}
    cursor = 0
    while True:
        cursor, batch = yield Call(partial(_hscan, key, cursor))
        fields.update(batch)
        if not int(cursor):
            return fields, False
        if len(fields) >= max_fields:
            return fields, True


class UsageLedger:
    """For the workers (blocking)."""

    def __init__(self, client: redis.Redis) -> None:
        self._run = SyncRunner(client, unavailable=Unavailable).run
        self._listed: dict[tuple[str, str], float] = {}  # (tenant, day) -> when this process listed it

    @classmethod
    def from_url(cls, url: str) -> UsageLedger:
        return cls(sync_client(url))

    def record(self, tenant: str, user: str, day: str, **amounts: int | float) -> None:
        self._run(record_plan(tenant, user, day, amounts))

    def record_once(
        self, tenant: str, user: str, day: str, conversation: str, entry_id: str, **amounts: int | float
    ) -> bool:
        return self._run(record_once_plan(tenant, user, day, amounts, conversation, entry_id))

    def record_entries(
        self,
        tenant: str,
        user: str,
        day: str,
        conversation: str,
        entries: Sequence[tuple[str, Mapping[str, int | float]]],
        also: Callable[[Any], None] | None = None,
    ) -> int:
        """`record_entries_plan`; the day's tenant set is written at most every TENANT_RELIST_S per
        tenant and day from this process (a worker counts many entries a second for the same tenants)."""
        listed_at = self._listed.get((tenant, day))
        now = time.monotonic()
        relist = listed_at is None or now - listed_at >= TENANT_RELIST_S
        counted = self._run(record_entries_plan(tenant, user, day, conversation, entries, relist, also))
        if counted and relist:
            if len(self._listed) >= MAX_LISTED:
                self._listed.clear()
            self._listed[(tenant, day)] = now
        return counted

    def cursor(self, tenant: str, conversation: str) -> str:
        return self._run(cursor_plan(tenant, conversation))

    def totals(self, tenant: str, user: str, day: str) -> tuple[Usage, Usage]:
        return self._run(totals_plan(tenant, user, day))

    def spending(self, tenant: str, user: str, now_ms: int) -> Spending:
        return self._run(spending_plan(tenant, user, now_ms))

    def report(
        self,
        days: list[str],
        tenant: str | None = None,
        user: str | None = None,
        max_rows: int = MAX_REPORT_ROWS,
    ) -> Report:
        return self._run(report_plan(days, tenant, user, max_rows))


class AsyncUsageLedger:
    """For the web process."""

    def __init__(self, client: aredis.Redis) -> None:
        self._run = AsyncRunner(client, unavailable=Unavailable).run

    async def totals(self, tenant: str, user: str, day: str) -> tuple[Usage, Usage]:
        return await self._run(totals_plan(tenant, user, day))

    async def spending(self, tenant: str, user: str, now_ms: int) -> Spending:
        return await self._run(spending_plan(tenant, user, now_ms))

    async def report(self, days: list[str], tenant: str | None = None, user: str | None = None) -> Report:
        return await self._run(report_plan(days, tenant, user))
