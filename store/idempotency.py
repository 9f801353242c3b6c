"""Idempotency ledger for tool side effects: claim a key before acting, record the result after.

Key: `idem:{<key>}` holding `C<owner>` while claimed (expires after the claim TTL, so a crashed claimant
does not block forever) and `D<result bytes>` once done (kept RESULT_TTL_MS). A tool honouring an
idempotency key does: `get` → done: return the recorded result; else `claim` → won: act, `record`
(or `release` on failure); lost: someone else is acting right now.
"""

from __future__ import annotations

from typing import Literal

import msgspec
import redis
import redis.asyncio as aredis

from store.exceptions import InputError, Unavailable
from store.redis import async_client, sync_client
from store.scripts import AsyncRunner, Call, Eval, Plan, SyncRunner, key_part, lua

CLAIM_TTL_MS = 5 * 60 * 1000
RESULT_TTL_MS = 7 * 24 * 3600 * 1000
MAX_RESULT_BYTES = 1024 * 1024
CLAIMED = b"C"
DONE = b"D"

RELEASE = lua("idempotency_release.lua")


class IdempotencyEntry(msgspec.Struct, frozen=True, kw_only=True):
    state: Literal["claimed", "done"]
    owner: str = ""  # who claimed it (claimed only)
    result: bytes = b""  # the recorded result (done only)


def idempotency_key(key: str) -> str:
    return f"idem:{{{key_part(key, 'key')}}}"


def _ttl(ttl_ms: int) -> int:
    if not isinstance(ttl_ms, int) or ttl_ms < 1:
        raise InputError("ttl_ms must be a positive integer", field="ttl_ms")
    return ttl_ms


def claim_plan(key: str, ttl_ms: int, owner: str) -> Plan[bool]:
    name, marker, ttl = idempotency_key(key), CLAIMED + owner.encode(), _ttl(ttl_ms)
    return bool((yield Call(lambda r: r.set(name, marker, nx=True, px=ttl))))


def record_plan(key: str, result: bytes, ttl_ms: int) -> Plan[None]:
    if not isinstance(result, bytes) or len(result) > MAX_RESULT_BYTES:
        raise InputError(f"result must be bytes, at most {MAX_RESULT_BYTES}", field="result")
    name, value, ttl = idempotency_key(key), DONE + result, _ttl(ttl_ms)
    yield Call(lambda r: r.set(name, value, px=ttl))


def release_plan(key: str, owner: str) -> Plan[bool]:
    return bool((yield Eval(RELEASE, [idempotency_key(key)], [CLAIMED + owner.encode()])))


def get_plan(key: str) -> Plan[IdempotencyEntry | None]:
    name = idempotency_key(key)
    value = yield Call(lambda r: r.get(name))
    if value is None:
        return None
    raw = value if isinstance(value, bytes) else value.encode()
    if raw.startswith(DONE):
        return IdempotencyEntry(state="done", result=raw[len(DONE) :])
    return IdempotencyEntry(state="claimed", owner=raw[len(CLAIMED) :].decode())


class IdempotencyLedger:
    """Blocking API, for tools running in actor threads."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._run = SyncRunner(client, unavailable=Unavailable).run

    @classmethod
    def from_url(cls, url: str) -> IdempotencyLedger:
        return cls(sync_client(url))

    def close(self) -> None:
        self.client.close()

    def claim(self, key: str, ttl_ms: int = CLAIM_TTL_MS, owner: str = "") -> bool:
        """True for the one caller that may perform the side effect now."""
        return self._run(claim_plan(key, ttl_ms, owner))

    def record(self, key: str, result: bytes, ttl_ms: int = RESULT_TTL_MS) -> None:
        self._run(record_plan(key, result, ttl_ms))

    def release(self, key: str, owner: str = "") -> bool:
        """Drop `owner`'s claim (the side effect failed and may be retried); a recorded result stays."""
        return self._run(release_plan(key, owner))

    def get(self, key: str) -> IdempotencyEntry | None:
        return self._run(get_plan(key))


class AsyncIdempotencyLedger:
    def __init__(self, client: aredis.Redis) -> None:
        self.client = client
        self._run = AsyncRunner(client, unavailable=Unavailable).run

    @classmethod
    def from_url(cls, url: str) -> AsyncIdempotencyLedger:
        return cls(async_client(url))

    async def aclose(self) -> None:
        await self.client.aclose()

    async def claim(self, key: str, ttl_ms: int = CLAIM_TTL_MS, owner: str = "") -> bool:
        return await self._run(claim_plan(key, ttl_ms, owner))

    async def record(self, key: str, result: bytes, ttl_ms: int = RESULT_TTL_MS) -> None:
        await self._run(record_plan(key, result, ttl_ms))

    async def release(self, key: str, owner: str = "") -> bool:
        return await self._run(release_plan(key, owner))

    async def get(self, key: str) -> IdempotencyEntry | None:
        return await self._run(get_plan(key))
