"""Token-bucket rate limiting in one Lua script, timed by the Redis server clock.

Key: `rl:{<key>}` (hash: tokens, at_us), expiring once the bucket would be full again. Callers choose
the key's meaning, e.g. `user:<tenant>:<user>` with Settings.user_rate_per_s / user_burst.

Several buckets checked together (`hit_all`: a user's and their tenant's) are one script call, one round
trip: the cost is taken from all of them or, when one is short, from none. They share the first bucket's
slot (`rl:{<first key>}` and `rl:{<first key>}:<key>` for the others), so it works on a Redis Cluster too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec
import redis
import redis.asyncio as aredis

from store.exceptions import InputError, RateLimited, Unavailable
from store.redis import async_client, sync_client
from store.scripts import AsyncRunner, Eval, Plan, SyncRunner, key_part, lua

TOKEN_BUCKET = lua("ratelimit.lua")


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    allowed: bool
    retry_after_ms: int  # 0 when allowed; else how long until `cost` tokens are there
    remaining: int  # whole tokens left after this hit (the fewest, over several buckets)
    short: str = ""  # refused: the key of the bucket that was short (the longest wait)


class Bucket(msgspec.Struct, frozen=True):
    key: str
    rate_per_s: float
    burst: int


def bucket_key(key: str) -> str:
    return f"rl:{{{key_part(key, 'key')}}}"


def bucket_keys(buckets: Sequence[Bucket]) -> list[str]:
    """The buckets' Redis keys, all in the first one's slot."""
    first = bucket_key(buckets[0].key)
    return [first, *(f"{first}:{key_part(b.key, 'key')}" for b in buckets[1:])]


def _checked(bucket: Bucket, cost: int) -> None:
    rate_per_s, burst = bucket.rate_per_s, bucket.burst
    if not isinstance(rate_per_s, int | float) or not math.isfinite(rate_per_s) or rate_per_s <= 0:
        raise InputError("rate_per_s must be a positive number", field="rate_per_s")
    if not isinstance(burst, int) or burst < 1:
        raise InputError("burst must be a positive integer", field="burst")
    if not isinstance(cost, int) or not 1 <= cost <= burst:
        raise InputError("cost must be between 1 and burst: a bigger cost could never pass", field="cost")


def hit_all_plan(buckets: Sequence[Bucket], cost: int) -> Plan[Verdict]:
    if not buckets:
        raise InputError("no bucket to check", field="buckets")
    for bucket in buckets:
        _checked(bucket, cost)
    args: list[float | int] = [cost]
    for bucket in buckets:
        args += [bucket.rate_per_s, bucket.burst]
    reply = yield Eval(TOKEN_BUCKET, bucket_keys(buckets), args)
    allowed, retry_after_ms, remaining, short = reply
    return Verdict(
        allowed=bool(allowed), retry_after_ms=int(retry_after_ms), remaining=int(remaining),
        short=buckets[int(short) - 1].key if int(short) else "",
    )  # fmt: skip


def hit_plan(key: str, rate_per_s: float, burst: int, cost: int) -> Plan[Verdict]:
    return hit_all_plan([Bucket(key, rate_per_s, burst)], cost)


def _enforced(verdict: Verdict) -> Verdict:
    if not verdict.allowed:
        raise RateLimited(
            f"too many requests; retry in {verdict.retry_after_ms} ms",
            retry_after_ms=verdict.retry_after_ms,
            key=verdict.short,
        )
    return verdict


class AsyncRateLimiter:
    """For the web process: one round trip per hit."""

    def __init__(self, client: aredis.Redis) -> None:
        self.client = client
        self._run = AsyncRunner(client, unavailable=Unavailable).run

    @classmethod
    def from_url(cls, url: str) -> AsyncRateLimiter:
        return cls(async_client(url))

    async def aclose(self) -> None:
        await self.client.aclose()

    async def hit(self, key: str, rate_per_s: float, burst: int, cost: int = 1) -> Verdict:
        """Take `cost` tokens from `key`'s bucket if it has them."""
        return await self._run(hit_plan(key, rate_per_s, burst, cost))

    async def check(self, key: str, rate_per_s: float, burst: int, cost: int = 1) -> Verdict:
        """`hit`, raising RateLimited (with retry_after_ms) when refused."""
        return _enforced(await self.hit(key, rate_per_s, burst, cost))

    async def check_all(self, buckets: Sequence[Bucket], cost: int = 1) -> Verdict:
        """`cost` from every bucket or none, in one round trip; RateLimited when one is short."""
        return _enforced(await self._run(hit_all_plan(buckets, cost)))


class RateLimiter:
    """The same for blocking callers."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._run = SyncRunner(client, unavailable=Unavailable).run

    @classmethod
    def from_url(cls, url: str) -> RateLimiter:
        return cls(sync_client(url))

    def close(self) -> None:
        self.client.close()

    def hit(self, key: str, rate_per_s: float, burst: int, cost: int = 1) -> Verdict:
        return self._run(hit_plan(key, rate_per_s, burst, cost))

    def check(self, key: str, rate_per_s: float, burst: int, cost: int = 1) -> Verdict:
        return _enforced(self.hit(key, rate_per_s, burst, cost))
