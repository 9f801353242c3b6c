"""Ask latencies per UTC hour in Redis: histograms of ask -> first token and ask -> answer, and their
percentiles over time (what the admin console charts; Prometheus has the same histograms per process).

    latency:{<tenant>}:<YYYY-MM-DDTHH>   hash `<route>:<measure>:<bucket>` -> answers in that bucket
    latency:{*}:<YYYY-MM-DDTHH>          the same, every tenant together (what the operator sees)

Buckets are `store.metrics.LATENCY_BUCKETS` (5 ms .. 2 min, then +Inf); a percentile is interpolated
inside its bucket, as Prometheus' `histogram_quantile` does. One record moves the tenant's and the
everyone's hash in one pipeline; every key expires `RETENTION_DAYS` after its last write.

    record_plan(tenant, route, hour, {"first_token": ms, "answer": ms})
    record_commands(...)          the same writes, to queue after another call (`store.usage`: a turn's
                                  usage and its latencies in one round trip)
    series_plan(hours, tenant=None, route="qa") -> LatencySeries (p50 / p95 per hour, None without answers)
    LatencyLedger (blocking: workers) / AsyncLatencyLedger (the web process) run them
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
import redis
import redis.asyncio as aredis

from store.exceptions import InputError, Unavailable
from store.metrics import LATENCY_BUCKETS
from store.redis import sync_client
from store.scripts import AsyncRunner, Batch, Plan, SyncRunner, key_part, text

BUCKETS_MS = tuple(round(b * 1000) for b in LATENCY_BUCKETS)  # upper bounds; one more bucket: +Inf
MEASURES = ("first_token", "answer")
ROUTES = ("qa", "agent", "workflow")
EVERYONE = "*"
RETENTION_DAYS = 62
RETENTION_S = RETENTION_DAYS * 86_400
MAX_HOURS = 31 * 24


class LatencyPoint(msgspec.Struct, frozen=True, kw_only=True):
    hour: str  # YYYY-MM-DDTHH (UTC)
    answers: int = 0  # answers timed that hour
    first_token_p50_ms: float | None = None
    first_token_p95_ms: float | None = None
    answer_p50_ms: float | None = None
    answer_p95_ms: float | None = None


class LatencySeries(msgspec.Struct, frozen=True, kw_only=True):
    route: str
    tenant: str  # "*": every tenant
    points: list[LatencyPoint]


def hour_of(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H")


def hours_of_days(days: Sequence[str]) -> list[str]:
    """Every hour of the given days (YYYY-MM-DD), at most MAX_HOURS."""
    if len(days) * 24 > MAX_HOURS:
        raise InputError(f"at most {MAX_HOURS // 24} days of hours", field="to")
    return [f"{day}T{h:02d}" for day in days for h in range(24)]


def bucket_of(ms: float) -> int:
    for n, bound in enumerate(BUCKETS_MS):
        if ms <= bound:
            return n
    return len(BUCKETS_MS)


def latency_key(tenant: str, hour: str) -> str:
    return f"latency:{{{tenant if tenant == EVERYONE else key_part(tenant, 'tenant')}}}:{hour}"


def _route(route: str) -> str:
    if route not in ROUTES:
        raise InputError(f"route is one of {', '.join(ROUTES)}", field="route")
    return route


def record_commands(
    tenant: str, route: str, hour: str, samples_ms: Mapping[str, float | None]
) -> Callable[[Any], None] | None:
    """What `record_plan` queues on a pipeline (None: nothing measured), to send with other writes."""
    fields = [
        f"{_route(route)}:{measure}:{bucket_of(ms)}"
        for measure, ms in samples_ms.items()
        if ms is not None and measure in MEASURES
    ]
    if not fields:
        return None
    keys = (latency_key(tenant, hour), latency_key(EVERYONE, hour))

    def queue(pipe: Any) -> None:
        for key in keys:
            for field in fields:
                pipe.hincrby(key, field, 1)
            pipe.expire(key, RETENTION_S)

    return queue


def record_plan(tenant: str, route: str, hour: str, samples_ms: Mapping[str, float | None]) -> Plan[None]:
    """Count each measure's sample (ms; None: not measured) in its bucket, for the tenant and everyone."""
    queue = record_commands(tenant, route, hour, samples_ms)
    if queue is not None:
        yield Batch(queue, transaction=False)  # two keys in two slots: not one MULTI


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The q-quantile (ms) of bucket counts (len(BUCKETS_MS) + 1), interpolated linearly in its bucket."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for n, count in enumerate(counts):
        if count and seen + count >= rank:
            if n == len(BUCKETS_MS):
                return float(BUCKETS_MS[-1])  # +Inf: the largest finite bound, as histogram_quantile
            lower = BUCKETS_MS[n - 1] if n else 0
            return round(lower + (BUCKETS_MS[n] - lower) * (rank - seen) / count, 1)
        seen += count
    return float(BUCKETS_MS[-1])


def _point(hour: str, route: str, fields: Mapping[Any, Any]) -> LatencyPoint:
    counts = {m: [0] * (len(BUCKETS_MS) + 1) for m in MEASURES}
    for name, value in fields.items():
        field_route, measure, bucket = text(name).split(":")
        if field_route == route and measure in counts and 0 <= int(bucket) <= len(BUCKETS_MS):
            counts[measure][int(bucket)] += int(text(value))
    return LatencyPoint(
        hour=hour, answers=sum(counts["answer"]),
        first_token_p50_ms=quantile(counts["first_token"], 0.5),
        first_token_p95_ms=quantile(counts["first_token"], 0.95),
        answer_p50_ms=quantile(counts["answer"], 0.5), answer_p95_ms=quantile(counts["answer"], 0.95),
    )  # fmt: skip


def series_plan(hours: Sequence[str], tenant: str | None = None, route: str = "qa") -> Plan[LatencySeries]:
    whose = EVERYONE if tenant is None else key_part(tenant, "tenant")
    _route(route)

    def queue(pipe: Any) -> None:
        for hour in hours:
            pipe.hgetall(latency_key(whose, hour))

    replies = yield Batch(queue, transaction=False)
    points = [_point(hour, route, fields or {}) for hour, fields in zip(hours, replies, strict=True)]
    return LatencySeries(route=route, tenant=whose, points=points)


class LatencyLedger:
    """For the workers (blocking)."""

    def __init__(self, client: redis.Redis) -> None:
        self._run = SyncRunner(client, unavailable=Unavailable).run

    @classmethod
    def from_url(cls, url: str) -> LatencyLedger:
        return cls(sync_client(url))

    def record(self, tenant: str, route: str, hour: str, **samples_ms: float | None) -> None:
        self._run(record_plan(tenant, route, hour, samples_ms))

    def series(self, hours: Sequence[str], tenant: str | None = None, route: str = "qa") -> LatencySeries:
        return self._run(series_plan(hours, tenant, route))


class AsyncLatencyLedger:
    """For the web process."""

    def __init__(self, client: aredis.Redis) -> None:
        self._run = AsyncRunner(client, unavailable=Unavailable).run

    async def series(
        self, hours: Sequence[str], tenant: str | None = None, route: str = "qa"
    ) -> LatencySeries:
        return await self._run(series_plan(hours, tenant, route))
