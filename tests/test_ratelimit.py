"""The token-bucket rate limiter against a real Redis (its clock, not ours)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from store.exceptions import InputError, RateLimited
from store.ratelimit import AsyncRateLimiter, Bucket, RateLimiter

pytestmark = pytest.mark.cluster  # every test here runs on one Redis and on a Redis Cluster

RATE_PER_S = 10.0  # one token every 100 ms
BURST = 5


@pytest.fixture
async def limiter(redis_url: str) -> AsyncIterator[AsyncRateLimiter]:
    limiter = AsyncRateLimiter.from_url(redis_url)
    yield limiter
    await limiter.aclose()


async def test_burst_then_refusal_then_refill(limiter: AsyncRateLimiter) -> None:
    # Redis's clock runs within ours: what it measured between two hits is at most our time from sending
    # the first to hearing the second. Under 1 / RATE_PER_S of ours, no token came back meanwhile; past
    # it (a loaded machine, a cluster's slower calls) one may have, and exact counts are not checked.
    started = time.monotonic()
    burst = [await limiter.hit("user:acme:alice", RATE_PER_S, BURST) for _ in range(BURST)]
    refused = await limiter.hit("user:acme:alice", RATE_PER_S, BURST)
    exact = time.monotonic() - started < 1 / RATE_PER_S
    assert all(v.allowed for v in burst)
    if exact:
        assert [v.remaining for v in burst] == [4, 3, 2, 1, 0]
        assert not refused.allowed
        assert 0 < refused.retry_after_ms <= 100

    wait_ms = refused.retry_after_ms if not refused.allowed else 1000 / RATE_PER_S
    await asyncio.sleep(wait_ms / 1000 + 0.005)
    started = time.monotonic()
    assert (await limiter.hit("user:acme:alice", RATE_PER_S, BURST)).allowed
    again = await limiter.hit("user:acme:alice", RATE_PER_S, BURST)
    if exact and time.monotonic() - started < 1 / RATE_PER_S:
        assert not again.allowed

    await asyncio.sleep(BURST / RATE_PER_S + 0.05)  # a full refill, capped at the burst
    started = time.monotonic()
    allowed = [(await limiter.hit("user:acme:alice", RATE_PER_S, BURST)).allowed for _ in range(BURST + 1)]
    assert allowed[:BURST] == [True] * BURST
    if time.monotonic() - started < 1 / RATE_PER_S:  # a loaded machine may refill a token meanwhile
        assert allowed[BURST] is False


async def test_buckets_are_per_key_and_check_raises(limiter: AsyncRateLimiter) -> None:
    rate = 1.0  # one token a second: a loaded machine (or a cluster's slower calls) refills none meanwhile
    for _ in range(BURST):
        await limiter.check("user:acme:alice", rate, BURST)

    with pytest.raises(RateLimited) as limited:
        await limiter.check("user:acme:alice", rate, BURST)

    assert 0 < limited.value.details["retry_after_ms"] <= 1000  # type: ignore[operator]
    assert (await limiter.check("user:acme:bob", rate, BURST)).allowed


async def test_a_cost_takes_several_tokens(limiter: AsyncRateLimiter) -> None:
    rate = 1.0  # one token a second: a loaded machine refills none between the two calls
    assert (await limiter.hit("tenant:acme", rate, BURST, cost=3)).remaining == 2
    refused = await limiter.hit("tenant:acme", rate, BURST, cost=3)
    assert not refused.allowed and 0 < refused.retry_after_ms <= 1000


async def test_bad_parameters_get_a_typed_error(limiter: AsyncRateLimiter) -> None:
    for key, rate, burst, cost in [
        ("user:{acme}", RATE_PER_S, BURST, 1),
        ("user", 0.0, BURST, 1),
        ("user", float("inf"), BURST, 1),
        ("user", RATE_PER_S, 0, 1),
        ("user", RATE_PER_S, BURST, BURST + 1),  # could never pass
    ]:
        with pytest.raises(InputError):
            await limiter.hit(key, rate, burst, cost)
    assert (await limiter.hit("user", RATE_PER_S, BURST)).remaining == BURST - 1


async def test_buckets_checked_together_take_from_all_or_none(limiter: AsyncRateLimiter) -> None:
    rate = 1.0  # one token a second: nothing refills meanwhile
    tenant, alice, bob = (
        Bucket("tenant:acme", rate, 3),
        Bucket("user:acme:alice", rate, 2),
        Bucket("user:acme:bob", rate, 5),
    )
    assert [(await limiter.check_all([tenant, alice])).remaining for _ in range(2)] == [1, 0]

    with pytest.raises(RateLimited) as limited:  # alice is short: the tenant keeps its last token
        await limiter.check_all([tenant, alice])
    assert limited.value.details["key"] == "user:acme:alice"
    assert 0 < limited.value.details["retry_after_ms"] <= 1000  # type: ignore[operator]

    assert (await limiter.check_all([tenant, bob])).remaining == 0  # the tenant's last token went to bob
    with pytest.raises(RateLimited) as limited:
        await limiter.check_all([tenant, bob])
    assert limited.value.details["key"] == "tenant:acme"
    with pytest.raises(InputError):
        await limiter.check_all([])


def test_the_blocking_limiter_shares_the_buckets(redis_url: str) -> None:
    limiter = RateLimiter.from_url(redis_url)
    assert [limiter.hit("k", 1.0, 2).allowed for _ in range(3)] == [True, True, False]
    with pytest.raises(RateLimited):
        limiter.check("k", 1.0, 2)
    limiter.close()
