"""server.dispatch against a real Redis (and a cluster): an ask posted while an activation holds the
conversation's lease sends no wake-up of its own; the holder's closing call reports it instead."""

from __future__ import annotations

import pytest

from server.dispatch import RedisDispatcher
from store.events import UserMessage
from store.log import ConversationLog
from store.redis import async_client, sync_client

pytestmark = pytest.mark.cluster  # on one Redis and on a Redis Cluster


async def test_a_held_lease_takes_the_wake_up_from_the_poster(redis_url: str) -> None:
    woken: list[str] = []

    async def wake(conv_id: str) -> None:
        woken.append(conv_id)

    log = ConversationLog(sync_client(redis_url))
    client = async_client(redis_url)
    dispatcher = RedisDispatcher(client, wake)
    try:
        first = await dispatcher.submit("d1", UserMessage(text="first"), dedup_id="a1")
        assert woken == ["d1"]  # nobody holds the conversation: the poster wakes it

        lease = log.acquire("d1", "worker-1", ttl_ms=5_000)
        await dispatcher.submit("d1", UserMessage(text="second"), dedup_id="a2")
        await dispatcher.submit("d1", UserMessage(text="second"), dedup_id="a2")  # a retry: no wake either
        assert woken == ["d1"]
        closed = log.close_lease(lease, inbox_seen=first)  # the holder had looked at the first only
        assert closed.released and closed.newer_inbox  # so its close wakes the actor (conversation._close)

        await dispatcher.submit("d1", UserMessage(text="third"), dedup_id="a3")
        assert woken == ["d1", "d1"]  # released: the poster wakes it again
    finally:
        await dispatcher.aclose()
        await client.aclose()
        log.client.close()
