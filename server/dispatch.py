"""The web process's `actors.api.Dispatcher`: inbound items go to the conversation's inbox, then a wake-up.

The inbox entry and its dedup marker are written by one small Lua script, so a retried submit with the
same `dedup_id` returns the first entry's id and writes nothing:

    conv:{<id>}:inbox               Stream, field `e` = store.events.encode(item)
    conv:{<id>}:dedup:<dedup_id>    the inbox entry id the dedup id was first posted as (24 h)
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import redis
import redis.asyncio as aredis

from actors.api import InboundItem
from store.conversations import identifier
from store.events import encode
from store.redis import unavailable

DEDUP_TTL_S = 24 * 3600

Wake = Callable[[str], Awaitable[None]]

log = logging.getLogger(__name__)

_SUBMIT_LUA = """
local previous = redis.call('GET', KEYS[2])
if previous then return {previous, 1} end
local id = redis.call('XADD', KEYS[1], '*', 'e', ARGV[1])
redis.call('SET', KEYS[2], id, 'NX', 'EX', ARGV[2])
return {id, 0}
"""


def inbox_key(conv_id: str) -> str:
    return f"conv:{{{identifier(conv_id, 'conversation_id')}}}:inbox"


def dedup_key(conv_id: str, dedup_id: str) -> str:
    return f"conv:{{{identifier(conv_id, 'conversation_id')}}}:dedup:{identifier(dedup_id, 'dedup_id')}"


async def no_wake(conv_id: str) -> None:
    log.debug("no wake configured for conversation %s", conv_id)


class RedisDispatcher:
    """Appends to `conv:{id}:inbox` (deduplicated), then awaits `wake(conv_id)`."""

    def __init__(self, client: aredis.Redis, wake: Wake = no_wake) -> None:
        self.client = client
        self.wake = wake
        self._submit = client.register_script(_SUBMIT_LUA)

    async def submit(self, conversation_id: str, item: InboundItem, *, dedup_id: str) -> str:
        keys = [inbox_key(conversation_id), dedup_key(conversation_id, dedup_id)]
        try:
            entry_id, _duplicate = await self._submit(keys=keys, args=[encode(item), DEDUP_TTL_S])
        except redis.RedisError as exc:
            raise unavailable(exc) from exc
        # Wake on duplicates too: the first submit's wake-up may be what got lost.
        await self.wake(conversation_id)
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
