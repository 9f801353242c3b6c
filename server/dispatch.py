"""The web process's `actors.api.Dispatcher`: inbound items go to the conversation's inbox, then a wake-up.

No wake-up when the post found the conversation's lease held (an activation is running, or closing): the
holder's closing call reports an inbox entry newer than all it looked at and wakes the actor itself
(`actors.conversation._close`; the post and that close are Lua scripts on the conversation's slot, so one
of them sees the other), and a holder that dies has its own message redelivered by dramatiq. That saves
the ask a dramatiq message, and the worker a wake-up that would find the lease held and wait out the retry.

The inbox and its dedup markers are store.log's (`post_inbox_plan`, one Lua script), so a
retried submit with the same `dedup_id` returns the first entry's id and writes nothing. With
`replicas` > 0 (a replicated Redis), a submit returns only once that many replicas have the entry
(`WAIT`, store/wait.py: the post and its WAIT on one connection to the primary that owns the
conversation's slot); when they do not within `wait_timeout_ms` it raises `Unavailable`, and the
client's retry (same dedup id) waits again without posting twice:

    conv:{<id>}:inbox                    Stream, field `e` = store.events.encode(item)
    conv:{<id>}:inbox_seen:<dedup_id>    the inbox entry id the dedup id was first posted as (24 h)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import redis.asyncio as aredis

from actors.api import InboundItem
from store.exceptions import Unavailable
from store.log import LogOptions, conv_keys, post_inbox_plan
from store.scripts import AsyncRunner
from store.wait import AsyncReplicaWait

Wake = Callable[[str], Awaitable[None]]


class RedisDispatcher:
    """Posts to `conv:{id}:inbox` (deduplicated), then awaits `wake(conv_id)`."""

    def __init__(
        self, client: aredis.Redis, wake: Wake, *, replicas: int = 0, wait_timeout_ms: int = 500
    ) -> None:
        self._run = AsyncRunner(client, unavailable=Unavailable).run  # an outage: the generic `unavailable`
        self.client = client
        self.options = LogOptions()
        self.wake = wake
        self.replicas = replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.replicated = AsyncReplicaWait(client, replicas, wait_timeout_ms) if replicas else None

    async def submit(self, conversation_id: str, item: InboundItem, *, dedup_id: str) -> str:
        plan = post_inbox_plan(conversation_id, item, dedup_id, self.options)
        if self.replicated is None:
            posted = await self._run(plan)
        else:  # a retried ask's WAIT covers the first post too: the retry renews the dedup key (a write)
            posted = await self.replicated.run(conv_keys(conversation_id).inbox, plan)
        # Wake on duplicates too: the first submit's wake-up may be what got lost.
        if not posted.held:
            await self.wake(conversation_id)
        return posted.inbox_id

    async def aclose(self) -> None:
        if self.replicated is not None:
            await self.replicated.aclose()
        close = getattr(self.wake, "aclose", None)  # actors.api.Wake holds a client; a function, none
        if close is not None:
            await close()
