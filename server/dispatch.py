"""The web process's `actors.api.Dispatcher`: inbound items go to the conversation's inbox, then a wake-up.

The inbox and its dedup markers are store.log's (`post_inbox_plan`, one Lua script), so a
retried submit with the same `dedup_id` returns the first entry's id and writes nothing. With
`replicas` > 0 (a replicated Redis), a submit returns only once that many replicas have the entry
(`WAIT`); when they do not within `wait_timeout_ms` it raises `Unavailable`, and the client's retry
(same dedup id) waits again without posting twice. On a Redis Cluster the post and its WAIT run on one
connection to the primary that owns the conversation's slot (`PrimaryPins`): the cluster client itself
would send WAIT to every primary, on connections that wrote nothing, and it would acknowledge at once:

    conv:{<id>}:inbox                    Stream, field `e` = store.events.encode(item)
    conv:{<id>}:inbox_seen:<dedup_id>    the inbox entry id the dedup id was first posted as (24 h)
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aredis

from actors.api import InboundItem
from store.exceptions import Unavailable
from store.log import LogOptions, Posted, conv_keys, post_inbox_plan
from store.redis import REDIS_ERRORS, is_cluster_client
from store.scripts import AsyncRunner, Plan

Wake = Callable[[str], Awaitable[None]]
PIN_POOL_CONNECTIONS = 64  # per primary: asks waiting for their replicas hold one each (WAIT)
PIN_POOL_WAIT_S = 5.0


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
        self.pins = PrimaryPins(client) if is_cluster_client(client) else None

    async def submit(self, conversation_id: str, item: InboundItem, *, dedup_id: str) -> str:
        plan = post_inbox_plan(conversation_id, item, dedup_id, self.options)
        posted = await (self._replicated(conversation_id, plan) if self.replicas else self._run(plan))
        # Wake on duplicates too: the first submit's wake-up may be what got lost.
        await self.wake(conversation_id)
        return posted.inbox_id

    async def _replicated(self, conversation_id: str, plan: Plan[Posted]) -> Posted:
        """The post, then WAIT on the same connection: WAIT counts the writes of the connection it runs on,
        so on another pooled connection (one that wrote nothing since) it would acknowledge at once."""
        if self.pins is None:
            return await self._post_and_wait(self.client, plan)
        try:
            owner = await self.pins.owner_of(conv_keys(conversation_id).inbox)
            return await self._post_and_wait(owner, plan)
        except Unavailable:
            await self.pins.refresh()  # a failover or a moved slot: the next retry asks the new owner
            raise

    async def _post_and_wait(self, client: aredis.Redis, plan: Plan[Posted]) -> Posted:
        try:
            async with client.client() as pinned:
                posted = await AsyncRunner(pinned, unavailable=Unavailable).run(plan)
                acknowledged = await pinned.wait(self.replicas, self.wait_timeout_ms)
        except REDIS_ERRORS as exc:  # no connection, or the primary died between the post and its WAIT
            raise Unavailable("the ask is not on enough replicas yet; retry it") from exc
        if acknowledged < self.replicas:
            raise Unavailable("the ask is not on enough replicas yet; retry it")
        return posted

    async def aclose(self) -> None:
        if self.pins is not None:
            await self.pins.aclose()


class PrimaryPins:
    """Plain (non-cluster) clients of a Redis Cluster's primaries, one per node, for commands that must run
    on the connection that wrote: `owner_of(key)` is the client of the primary serving `key`'s slot as the
    cluster client's slot map says. A plain client on a node that no longer owns the slot gets MOVED
    (`unavailable`); `refresh()` re-reads the slot map."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.clients: dict[str, aredis.Redis] = {}

    async def owner_of(self, key: str) -> aredis.Redis:
        try:
            await self.cluster.initialize()  # the first call loads the slot map (later ones return at once)
            node = self.cluster.get_node_from_key(key)
        except REDIS_ERRORS as exc:  # the slot map is not loaded yet, or a failover left the slot uncovered
            raise Unavailable("no primary serves this conversation yet; retry it") from exc
        client = self.clients.get(node.name)
        if client is None:
            options = node.connection_kwargs
            pool = aredis.BlockingConnectionPool(
                host=node.host, port=node.port, username=options.get("username"),
                password=options.get("password"), client_name=options.get("client_name"),
                max_connections=PIN_POOL_CONNECTIONS, timeout=PIN_POOL_WAIT_S,
            )  # fmt: skip
            client = self.clients[node.name] = aredis.Redis(connection_pool=pool)
        return client

    async def refresh(self) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            await self.cluster.nodes_manager.initialize()

    async def aclose(self) -> None:
        for client in self.clients.values():
            with contextlib.suppress(*REDIS_ERRORS):
                await client.aclose()
        self.clients.clear()
