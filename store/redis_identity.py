"""Is the Redis answering the one this stack started? An identity key, written at start, checked at readiness.

`docent run` writes a random identity to `docent:identity` each time it starts its embedded Redis and hands
the same value to its children (DOCENT_REDIS_IDENTITY); the web process and the workers refuse a Redis that
holds another identity (`RedisNotOwned`), so a stack whose Redis died never carries on with another one that
took its port. With an external Redis (DOCENT_REDIS_URL set by the operator) the identity is empty and not
checked.
"""

from __future__ import annotations

import time

import redis
import redis.asyncio as aredis

from store.exceptions import RedisNotOwned, Unavailable
from store.redis import REDIS_ERRORS, sync_client, unavailable
from store.settings import Settings

IDENTITY_KEY = "docent:identity"
BOOT_WAIT_S = 15.0
BOOT_RETRY_S = 0.2


def claim(client: redis.Redis, identity: str) -> None:
    client.set(IDENTITY_KEY, identity)


def _check(found: bytes | str | None, expected: str) -> None:
    text = found.decode() if isinstance(found, bytes) else found
    if text != expected:
        raise RedisNotOwned("the Redis answering is not the one this stack started: refusing to use it")


def verify(client: redis.Redis, expected: str) -> None:
    """RedisNotOwned unless the Redis holds `expected` (nothing to check when `expected` is empty)."""
    if not expected:
        return
    try:
        found = client.get(IDENTITY_KEY)
    except redis.AuthenticationError:
        raise RedisNotOwned("the Redis answering refused this stack's password: refusing to use it") from None
    except REDIS_ERRORS as exc:
        raise unavailable(exc) from exc
    _check(found, expected)  # type: ignore[arg-type]


async def averify(client: aredis.Redis, expected: str) -> None:
    if not expected:
        return
    try:
        found = await client.get(IDENTITY_KEY)
    except redis.AuthenticationError:
        raise RedisNotOwned("the Redis answering refused this stack's password: refusing to use it") from None
    except REDIS_ERRORS as exc:
        raise unavailable(exc) from exc
    _check(found, expected)


def verify_at_boot(settings: Settings) -> None:
    """`verify` for a process about to start work, waiting up to BOOT_WAIT_S for a Redis that is
    restarting (RedisNotOwned is final)."""
    if not settings.redis_identity:
        return
    client = sync_client(settings.redis_url)
    deadline = time.monotonic() + BOOT_WAIT_S
    try:
        while True:
            try:
                return verify(client, settings.redis_identity)
            except Unavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(BOOT_RETRY_S)
    finally:
        client.close()
