"""The web process's one fan-out hub: every Redis stream a socket follows (conversation live streams, reviewer
room streams, reindex progress) is read by a bounded pool of blocking readers, never one per socket or room.

Each followed key is a topic: the id it has been read up to, a decode function (entry → item, run once per
entry) and its subscribers. Topics are grouped into shards of at most HUB_BATCH_KEYS keys; each shard is
one `XREAD BLOCK` loop on its own connection that also reads a per-process wake stream, written when the
shard's key set changes, so a new key is read at once. At most HUB_MAX_READERS shards exist: past that,
keys join the least loaded shard. On a Redis Cluster one XREAD may read one hash slot only, so shards
are batched by slot: a shard holds keys of one slot (its wake stream is tagged into that slot), and the
readers are bounded by the followed slots (at most 16384), not by HUB_MAX_READERS. Each read's decoded
items are offered to every subscriber at once: written straight to its socket by its sink while it keeps
up (server.buffer, server.ws_protocol), else queued in its bounded buffer; a subscriber that falls behind
by more than its capacity is marked overflowed (its socket is told to resume), so a slow client never
stalls the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
import os
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

import redis.asyncio as aredis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError

from server.buffer import BoundedBuffer
from store import keys, metrics
from store.clock import now_ms
from store.redis import REDIS_ERRORS, async_client, is_cluster_client, is_cluster_url, key_slot
from store.retry import RetryPolicy
from store.scripts import text

HUB_BATCH_KEYS = 32
HUB_MAX_READERS = 256
CLUSTER_SLOTS = 16384  # a cluster hub's readers: one per followed slot at most
HUB_SPARE_CONNECTIONS = 16  # tail reads and wake writes, beside the blocked readers
HUB_BLOCK_MS = 2_000  # under redis-py's default 5 s socket timeout
HUB_READ_COUNT = 256  # entries per stream per XREAD
WAKE_TTL_MS = 60_000
HUB_CLOSE_TIMEOUT_S = 2.0
READ_RETRY = RetryPolicy(max_retries=0, first_s=0.05, max_s=2.0, factor=4.0)  # 0.05, 0.2, 0.8, 2 s, forever
CLIENT_NAME_PREFIX = "docent-hub"
ZERO_ID = b"0-0"
CURSOR_ARGUMENT = operator.attrgetter("cursor_argument")  # a topic's RESP-encoded cursor, fetched in C

log = logging.getLogger(__name__)

T = TypeVar("T")
# An entry id's sort key: one int, ms above the 64 bits of seq (Redis's own order). An int, not a tuple, so
# the key each topic and socket keeps of its last entry is not one more object for the collector: a tuple
# replaced per event lives until its topic's next event, and young collections scan every one still alive.
StreamKey = int
SEQ_BITS = 64
MAX_SEQ = (1 << SEQ_BITS) - 1  # Redis's largest seq; a client's id may carry more digits (20): clamped
Fields = dict[Any, Any]
Decode = Callable[[str, Fields], T | None]


def id_key(entry_id: str) -> StreamKey:
    ms, _, seq = entry_id.partition("-")
    return int(ms) << SEQ_BITS | min(int(seq or 0), MAX_SEQ)


def key_ms(key: StreamKey) -> int:
    """The ms part of an entry's sort key."""
    return key >> SEQ_BITS


def bulk(argument: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(argument), argument)


def xread_head(keys: list[bytes]) -> bytes:
    """`XREAD COUNT .. BLOCK .. STREAMS <keys>` RESP-encoded, to be followed by one cursor per key."""
    arguments = [b"XREAD", b"COUNT", str(HUB_READ_COUNT).encode(), b"BLOCK", str(HUB_BLOCK_MS).encode()]
    arguments += [b"STREAMS", *keys]
    return b"*%d\r\n" % (len(arguments) + len(keys)) + b"".join(bulk(a) for a in arguments)


def with_field_dicts(entries: list[Any]) -> list[tuple[Any, Fields]]:
    """A raw XREAD reply's entries as redis-py's XREAD callback makes them: (id, {field: value})."""
    return [(entry_id, dict(zip(fields[::2], fields[1::2], strict=True))) for entry_id, fields in entries]


async def write_command(connection: Connection, command: bytes) -> None:
    """`command` written to the connection's stream at once (redis-py's send_packed_command wraps each write
    in a `wait_for`: a task per command); a connection not (or no longer) connected goes through it."""
    writer = connection._writer
    if writer is None or writer.is_closing():
        await connection.send_packed_command(command, check_health=False)  # (re)connects first
        return
    try:
        writer.write(command)
        await writer.drain()  # returns at once unless the transport is over its high-water mark
    except OSError as exc:
        raise RedisConnectionError(f"hub write failed: {exc}") from exc


def hub_client(redis_url: str) -> aredis.Redis:
    """The hub's own connection pool: bounded, named after this process (`CLIENT LIST` shows the readers)."""
    readers = CLUSTER_SLOTS if is_cluster_url(redis_url) else HUB_MAX_READERS
    return async_client(
        redis_url,
        max_connections=readers + HUB_SPARE_CONNECTIONS,
        client_name=f"{CLIENT_NAME_PREFIX}-{os.getpid()}",
    )


class Subscription(BoundedBuffer[T]):
    """One socket's bounded buffer of items from one key, filled by the hub."""

    def __init__(self, hub: Hub, key: str, capacity: int) -> None:
        super().__init__(capacity)
        self.hub = hub
        self.key = key

    def _on_close(self) -> None:
        self.hub.unsubscribe(self)


class _Topic(Generic[T]):
    """One key: where the reader is in it, how its entries decode, and who listens."""

    def __init__(self, key: str, decode: Decode[T], loop: asyncio.AbstractEventLoop) -> None:
        self.key = key
        self.raw_key = key.encode()  # the XREAD argument, encoded once
        self.decode = decode
        self.cursor: bytes | None = None  # None until the stream's tail at subscription time is known
        self.cursor_argument = bulk(ZERO_ID)  # the cursor RESP-encoded, once per move (server.hub's XREAD)
        self.floor: StreamKey = 0  # the cursor's sort key
        self.subscribers: set[Subscription[T]] = set()
        self.started: asyncio.Future[None] = loop.create_future()
        self.shard: _Shard | None = None

    def move_to(self, entry_id: bytes | str) -> None:
        """The cursor (where the next read starts), its RESP encoding and its sort key, moved together."""
        self.cursor = entry_id if isinstance(entry_id, bytes) else entry_id.encode()
        self.cursor_argument = bulk(self.cursor)
        self.floor = id_key(text(entry_id))

    def deliver(self, entries: list[tuple[Any, Fields]]) -> None:
        """The entries of one read, in id order; those at or below the cursor (read before this topic was
        (re)started) are skipped. One id parse per read when nothing is skipped, whatever the entries."""
        if not entries:
            return
        first = 0
        while first < len(entries) and id_key(text(entries[first][0])) <= self.floor:
            first += 1
        if first == len(entries):
            return
        self.move_to(entries[-1][0])
        if not self.subscribers:
            return
        decoded = (self._decoded(raw_id, fields) for raw_id, fields in entries[first:])
        items = [item for item in decoded if item is not None]
        for subscriber in list(self.subscribers):  # a sink may close its own subscription
            subscriber.offer(items)
        metrics.observe_fanout(self.key, key_ms(self.floor), now_ms())  # the newest entry, once per read

    def _decoded(self, raw_id: bytes | str, fields: Fields) -> T | None:
        entry_id = text(raw_id)
        try:
            return self.decode(entry_id, fields)
        except Exception:  # one bad entry must not silence the key for every subscriber
            log.exception("skipping entry %s of %s", entry_id, self.key)
            return None


class _Shard:
    """Topics read by one XREAD BLOCK loop on its own connection."""

    def __init__(self, hub: Hub, number: int, slot: int | None, slot_of: str | None) -> None:
        self.hub = hub
        self.slot = slot  # on a cluster: the one slot of every key this shard reads
        self.wake_key = keys.hub_wake(hub.process_id, number, slot_of)
        self.raw_wake_key = self.wake_key.encode()
        self.wake_cursor: bytes = b"$"
        self.topics: dict[str, _Topic[Any]] = {}  # every one has its cursor (added once started)
        self._keys: list[bytes] | None = None  # XREAD's keys, while the topics do not change
        self._command_head: bytes | None = None  # the same, RESP-encoded up to the first cursor
        self._connection: Connection | None = None  # a single-node hub's own, held between reads
        self.changed = asyncio.Event()
        self.reading = False
        self.wake_sent = False
        self.task = asyncio.create_task(self._run(), name=f"hub-shard-{number}")

    def add(self, topic: _Topic[Any]) -> None:
        self.topics[topic.key] = topic
        self._keys = self._command_head = None
        topic.shard = self
        self.changed.set()
        if self.reading and not self.wake_sent:
            self.wake_sent = True
            self.hub.spawn(self._wake())

    async def _wake(self) -> None:
        try:
            async with self.hub.client.pipeline(transaction=False) as pipe:
                pipe.xadd(self.wake_key, {"w": "1"}, maxlen=1, approximate=False)
                pipe.pexpire(self.wake_key, WAKE_TTL_MS)
                await pipe.execute()
        except REDIS_ERRORS as exc:  # the reader's block timeout still picks the key up
            log.warning("hub wake failed: %s", exc)

    def remove(self, key: str) -> None:
        """Left out of the shard's next XREAD."""
        if self.topics.pop(key, None) is not None:
            self._keys = self._command_head = None

    def _key_list(self) -> list[bytes]:
        """XREAD's keys: every topic's, then the wake stream's (kept until the shard's topics change)."""
        if self._keys is None:
            self._keys = [*(t.raw_key for t in self.topics.values()), self.raw_wake_key]
        return self._keys

    def _arguments(self) -> list[Any]:
        """XREAD's arguments after STREAMS: the keys, then each one's cursor (the raw ids the last reads
        returned)."""
        cursors = [t.cursor for t in self.topics.values()]
        return [*self._key_list(), *cursors, self.wake_cursor]

    async def _run(self) -> None:
        failures = 0
        while True:
            if not self.topics:
                self.changed.clear()
                await self.changed.wait()
                continue
            try:
                reply = await self._read()
                failures = 0
            except REDIS_ERRORS as exc:
                delay = READ_RETRY.delay_s(failures)
                failures += 1
                log.warning("hub read failed (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            self._dispatch(reply)

    async def _read(self) -> Any:
        self.changed.clear()
        self.wake_sent = False
        self.reading = True
        try:
            return await (self._read_routed() if self.hub.cluster else self._read_own())
        finally:
            self.reading = False

    async def _read_routed(self) -> Any:
        """XREAD through the cluster client (it picks the slot's node), without redis-py's xread()
        wrapper (argument checks, a dict, a lag recorder)."""
        arguments = self._arguments()
        return await self.hub.client.execute_command(
            "XREAD", b"COUNT", HUB_READ_COUNT, b"BLOCK", HUB_BLOCK_MS, b"STREAMS", *arguments,
            keys=arguments[: len(arguments) // 2],
        )  # fmt: skip

    async def _read_own(self) -> Any:
        """XREAD on this shard's own connection, its command bytes built from the kept head and the
        cursors (no pool checkout, retry wrapper or argument packing per read: bench/hub_read.py), written
        to the connection's stream at once (redis-py's send_packed_command wraps each write in a
        `wait_for`, a task per read; the read that follows has its socket timeout). Any failure,
        cancellation included, drops the connection: a reply left unread cannot follow."""
        connection = self._connection
        if connection is None:
            connection = self._connection = await self.hub.client.connection_pool.get_connection()
        try:
            await write_command(connection, self._command())
            return await connection.read_response()
        except BaseException:
            self._connection = None
            await self.hub.drop(connection)
            raise

    def _command(self) -> bytes:
        if self._command_head is None:
            self._command_head = xread_head(self._key_list())
        cursors = b"".join(map(CURSOR_ARGUMENT, self.topics.values()))
        return b"".join((self._command_head, cursors, bulk(self.wake_cursor)))

    def _dispatch(self, reply: Any) -> None:
        streams = reply.items() if isinstance(reply, dict) else reply or ()  # RESP3 maps, RESP2 arrays
        for raw_key, entries in streams:
            key = text(raw_key)
            if key == self.wake_key:
                self.wake_cursor = entries[-1][0]
            elif (topic := self.topics.get(key)) is not None and topic.cursor is not None:
                topic.deliver(entries if self.hub.cluster else with_field_dicts(entries))

    def release(self) -> Connection | None:
        connection, self._connection = self._connection, None
        return connection


class Hub:
    """The process's shared reader. Create inside the running loop; `aclose` at shutdown."""

    def __init__(self, client: aredis.Redis) -> None:
        self.client = client
        self.cluster = is_cluster_client(client)
        self.process_id = uuid.uuid4().hex[:12]
        self._topics: dict[str, _Topic[Any]] = {}
        self._shards: list[_Shard] = []
        self._background: set[asyncio.Task[None]] = set()

    @property
    def topic_count(self) -> int:
        return len(self._topics)

    @property
    def reader_count(self) -> int:
        return len(self._shards)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def subscribe(self, key: str, decode: Decode[T], capacity: int) -> Subscription[T]:
        """A subscription to `key` that receives every entry appended after this call returns (and possibly
        some before: callers drop ids they already handled). `decode` runs once per entry for everyone
        following the key (the first subscriber's function is the key's)."""
        subscription: Subscription[T] = Subscription(self, key, capacity)
        topic = self._topics.get(key)
        if topic is None:
            topic = self._topics[key] = _Topic(key, decode, asyncio.get_running_loop())
            self.spawn(self._start(topic))
        topic.subscribers.add(subscription)
        try:
            await asyncio.shield(topic.started)
        except BaseException:
            subscription.close()
            raise
        return subscription

    async def _start(self, topic: _Topic[Any]) -> None:
        try:
            tail: Any = await self.client.xrevrange(topic.key, "+", "-", count=1)
        except REDIS_ERRORS as exc:
            if self._topics.get(topic.key) is topic:
                del self._topics[topic.key]
            topic.started.set_exception(exc)
            topic.started.exception()  # retrieved: waiters re-raise their own copy
            return
        topic.move_to(tail[0][0] if tail else ZERO_ID)
        if self._topics.get(topic.key) is topic:
            self._shard_for(topic.key).add(topic)
        topic.started.set_result(None)

    def _shard_for(self, key: str) -> _Shard:
        slot = key_slot(key) if self.cluster else None
        fitting = [s for s in self._shards if s.slot == slot]
        open_shard = next((s for s in fitting if len(s.topics) < HUB_BATCH_KEYS), None)
        if open_shard is not None:
            return open_shard
        if fitting and len(self._shards) >= HUB_MAX_READERS:
            return min(fitting, key=lambda s: len(s.topics))
        shard = _Shard(self, len(self._shards), slot, key if self.cluster else None)
        self._shards.append(shard)
        return shard

    def unsubscribe(self, subscription: Subscription[Any]) -> None:
        topic = self._topics.get(subscription.key)
        if topic is None:
            return
        topic.subscribers.discard(subscription)
        if not topic.subscribers:
            del self._topics[topic.key]
            if topic.shard is not None:
                topic.shard.remove(topic.key)

    async def drop(self, connection: Connection) -> None:
        """A shard's own connection, disconnected and back in the pool (a new one replaces it)."""
        with contextlib.suppress(Exception):
            await connection.disconnect()
        with contextlib.suppress(Exception):
            await self.client.connection_pool.release(connection)

    async def aclose(self) -> None:
        """Cancel every reader; waits at most HUB_CLOSE_TIMEOUT_S for them (a reader cancelled inside the
        cluster client's connection handling may take long to unwind; shutdown must not hang on it)."""
        tasks = [s.task for s in self._shards] + list(self._background)
        for task in tasks:
            task.cancel()
        if tasks:
            done, _ = await asyncio.wait(tasks, timeout=HUB_CLOSE_TIMEOUT_S)
            for task in done:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    task.result()
        for shard in self._shards:
            if (connection := shard.release()) is not None:
                await self.drop(connection)
        self._shards.clear()
        self._topics.clear()
