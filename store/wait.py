"""Writes acknowledged by replicas (`WAIT`): with `settings.redis_wait_replicas` N > 0, a write counts as done
only once N replicas have it, so a failover (which promotes a replica) cannot lose it.

`WAIT N T` blocks until N replicas have acknowledged every write *of the connection it runs on* (up to T ms)
and returns how many did. A pooled client would send it on a connection that wrote nothing and it would
answer at once; the cluster client would even send it to every primary. So each write that must be
replicated runs, with its WAIT, on one pinned connection to the primary that serves its key's slot:

- the web process posts an ask and waits (`AsyncReplicaWait`, server/dispatch.py): the ask is `accepted`
  only once it is on N replicas;
- the worker, right before each effect (a model call after its `LLMRequested`, a tool call after its
  `ToolIntent`, an approval's ledger write) and at the activation's end (actors/activation.py
  `ActivationCore.before_effect`, `replicated`), renews the conversation's lease and waits
  (`ReplicaWait`): the renewal is a write later than every append so far (the replication stream is one
  sequence per primary, whatever connection wrote), so once N replicas have it they have the call's own
  record and everything before it, and the call runs only then. One WAIT per effect, however many events
  came before it: a Q&A turn pays 2 (its model call, its end), where a WAIT at every step boundary paid 5.

Either raises the caller's `unavailable` error when fewer than N replicas answered in time or the primary
is unreachable (the slot map is re-read first, so a retry asks the new owner after a failover). A plain
(non-cluster) client with replicas pins a connection of its own pool.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import redis
import redis.asyncio as aredis

from store.exceptions import DocentError, LogError, Unavailable
from store.redis import REDIS_ERRORS, is_cluster_client
from store.scripts import AsyncRunner, Plan, SyncRunner, T

PIN_POOL_CONNECTIONS = 64  # per primary (web process): asks waiting for their replicas hold one each
PIN_POOL_WAIT_S = 5.0
NOT_REPLICATED = "the write is not on enough replicas yet; retry it"

log = logging.getLogger(__name__)


def _check_acknowledged(
    acknowledged: int, replicas: int, timeout_ms: int, unavailable: type[DocentError]
) -> None:
    """The caller's `unavailable` error when fewer than `replicas` replicas acknowledged within the WAIT."""
    if acknowledged < replicas:
        log.warning("WAIT %d: %d replicas acknowledged within %d ms", replicas, acknowledged, timeout_ms)
        raise unavailable(NOT_REPLICATED)


class ReplicaWait:
    """Blocking: `run(key, plan)` runs `plan` on one connection to `key`'s primary, then WAITs there."""

    def __init__(
        self,
        client: redis.Redis,
        replicas: int,
        timeout_ms: int,
        *,
        unavailable: type[DocentError] = LogError,
    ) -> None:
        self.client = client
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self.unavailable = unavailable

    def run(self, key: str, plan: Plan[T]) -> T:
        """`plan`'s result once `replicas` replicas have its writes; its own errors pass through."""
        try:
            with self._owner(key).client() as pinned:
                result = SyncRunner(pinned, unavailable=self.unavailable).run(plan)
                acknowledged = int(pinned.wait(self.replicas, self.timeout_ms))
        except REDIS_ERRORS as exc:  # the primary died between the write and its WAIT, or is unreachable
            self._refresh()
            raise self.unavailable(NOT_REPLICATED) from exc
        except self.unavailable:
            self._refresh()
            raise
        _check_acknowledged(acknowledged, self.replicas, self.timeout_ms, self.unavailable)
        return result

    def _owner(self, key: str) -> redis.Redis:
        if not is_cluster_client(self.client):
            return self.client
        cluster: Any = self.client
        node = cluster.get_node_from_key(key)  # the primary, as the client's slot map says
        return node.redis_connection  # type: ignore[no-any-return]

    def _refresh(self) -> None:
        if is_cluster_client(self.client):
            with contextlib.suppress(*REDIS_ERRORS):
                self.client.nodes_manager.initialize()  # type: ignore[attr-defined]


class AsyncReplicaWait:
    """The asyncio side: `run(key, plan)` as `ReplicaWait.run`. The asyncio cluster client has no per-node
    client, so this one keeps its own (`PrimaryPins`)."""

    def __init__(
        self,
        client: aredis.Redis,
        replicas: int,
        timeout_ms: int,
        *,
        unavailable: type[DocentError] = Unavailable,
    ) -> None:
        self.client = client
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self.unavailable = unavailable
        self.pins = PrimaryPins(client, unavailable) if is_cluster_client(client) else None

    async def run(self, key: str, plan: Plan[T]) -> T:
        try:
            owner = self.client if self.pins is None else await self.pins.owner_of(key)
            async with owner.client() as pinned:
                result = await AsyncRunner(pinned, unavailable=self.unavailable).run(plan)
                acknowledged = int(await pinned.wait(self.replicas, self.timeout_ms))
        except REDIS_ERRORS as exc:  # no connection, or the primary died between the write and its WAIT
            await self._refresh()
            raise self.unavailable(NOT_REPLICATED) from exc
        except self.unavailable:
            await self._refresh()  # a failover or a moved slot: the next retry asks the new owner
            raise
        _check_acknowledged(acknowledged, self.replicas, self.timeout_ms, self.unavailable)
        return result

    async def _refresh(self) -> None:
        if self.pins is not None:
            await self.pins.refresh()

    async def aclose(self) -> None:
        if self.pins is not None:
            await self.pins.aclose()


class PrimaryPins:
    """Plain (non-cluster) asyncio clients of a Redis Cluster's primaries, one per node, for commands that
    must run on the connection that wrote: `owner_of(key)` is the client of the primary serving `key`'s slot
    as the cluster client's slot map says. A plain client on a node that no longer owns the slot gets MOVED
    (`unavailable`); `refresh()` re-reads the slot map."""

    def __init__(self, cluster: Any, unavailable: type[DocentError] = Unavailable) -> None:
        self.cluster = cluster
        self.unavailable = unavailable
        self.clients: dict[str, aredis.Redis] = {}

    async def owner_of(self, key: str) -> aredis.Redis:
        try:
            await self.cluster.initialize()  # the first call loads the slot map (later ones return at once)
            node = self.cluster.get_node_from_key(key)
        except REDIS_ERRORS as exc:  # the slot map is not loaded yet, or a failover left the slot uncovered
            raise self.unavailable("no primary serves this key yet; retry it") from exc
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
