"""From Redis to sockets: one shared reader per web process, and the replay that resumes a socket.

`Fanout` keeps every subscribed `conv:{id}:live` key with the id it has read up to, and XREADs BLOCK over
them in batches of at most FANOUT_BATCH_KEYS keys (one blocking connection per batch, never one per
socket). Each batch also reads a per-process wake stream, written when the batch's key set changes, so a
new subscription is read at once. Every entry is decoded and encoded as a server frame once, then handed
to each subscriber's bounded buffer; a subscriber that falls behind by more than its capacity is marked
overflowed (its socket gets `resume_required` and resumes), so a slow client never stalls the others.

`replay` is the catch-up a socket does after subscribing: everything after the client's last id, from the
live stream while it still holds that id, else durable events from the log up to the live stream's head.
The two overlap by design; sockets drop any frame whose id is not above the last one they sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import redis
import redis.asyncio as aredis

from server.buffer import BoundedBuffer
from server.protocol import DeltaFrame, EventFrame, encode
from store.conversations import identifier
from store.events import TERMINAL, Delta, decode_live

FANOUT_BATCH_KEYS = 32
FANOUT_BLOCK_MS = 2_000  # under redis-py's default 5 s socket timeout
FANOUT_READ_COUNT = 256  # entries per stream per XREAD
REPLAY_PAGE_ENTRIES = 500
WAKE_TTL_MS = 60_000
RETRY_BACKOFF_S = (0.05, 0.2, 1.0, 2.0)

log = logging.getLogger(__name__)

StreamKey = tuple[int, int]


def live_key(conv_id: str) -> str:
    return f"conv:{{{identifier(conv_id, 'conversation_id')}}}:live"


def log_key(conv_id: str) -> str:
    return f"conv:{{{identifier(conv_id, 'conversation_id')}}}:log"


def id_key(entry_id: str) -> StreamKey:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class LiveFrame(msgspec.Struct, frozen=True):
    """One stream entry, ready to send: its id, sort key, turn, whether it is a delta, the encoded frame."""

    id: str
    key: StreamKey
    turn: int
    is_delta: bool
    terminal: bool
    data: bytes


def to_frame(entry_id: bytes | str, fields: dict[Any, Any]) -> LiveFrame | None:
    """The server frame for one `:live`/`:log` entry; None (logged) for an entry we cannot decode."""
    eid = _text(entry_id)
    raw = fields.get(b"e", fields.get("e"))
    try:
        item = decode_live(raw)  # type: ignore[arg-type]  # None or junk: DecodeError/TypeError
    except (msgspec.DecodeError, TypeError):
        log.error("skipping undecodable stream entry %s", eid)
        return None
    if isinstance(item, Delta):
        data = encode(DeltaFrame(id=eid, text=item.text, turn=item.turn))
        return LiveFrame(eid, id_key(eid), item.turn, True, False, data)
    raw_bytes = raw if isinstance(raw, bytes) else str(raw).encode()
    data = encode(EventFrame(id=eid, event=msgspec.Raw(raw_bytes)))
    return LiveFrame(eid, id_key(eid), item.turn, False, isinstance(item, TERMINAL), data)


class Subscription(BoundedBuffer[LiveFrame]):
    """One socket's bounded buffer of frames for one conversation, filled by the shared reader."""

    def __init__(self, fanout: Fanout, key: str, capacity: int) -> None:
        super().__init__(capacity)
        self.fanout = fanout
        self.key = key

    def _on_close(self) -> None:
        self.fanout.unsubscribe(self)


class _Topic:
    """One live key: where the reader is in it, and who listens."""

    def __init__(self, key: str, loop: asyncio.AbstractEventLoop) -> None:
        self.key = key
        self.cursor: str | None = None  # None until the stream's tail at subscription time is known
        self.subscribers: set[Subscription] = set()
        self.started: asyncio.Future[None] = loop.create_future()
        self.shard: _Shard | None = None


class _Shard:
    """At most FANOUT_BATCH_KEYS topics read by one XREAD BLOCK loop on its own connection."""

    def __init__(self, fanout: Fanout, number: int) -> None:
        self.fanout = fanout
        self.wake_key = f"fanout:{{{fanout.process_id}}}:wake:{number}"
        self.wake_cursor = "$"
        self.topics: dict[str, _Topic] = {}
        self.changed = asyncio.Event()
        self.reading = False
        self.wake_sent = False
        self.task = asyncio.create_task(self._run(), name=f"fanout-shard-{number}")

    def add(self, topic: _Topic) -> None:
        self.topics[topic.key] = topic
        topic.shard = self
        self.changed.set()
        if self.reading and not self.wake_sent:
            self.wake_sent = True
            self.fanout.spawn(self._wake())

    async def _wake(self) -> None:
        try:
            async with self.fanout.client.pipeline(transaction=False) as pipe:
                pipe.xadd(self.wake_key, {"w": "1"}, maxlen=1, approximate=False)
                pipe.pexpire(self.wake_key, WAKE_TTL_MS)
                await pipe.execute()
        except redis.RedisError as exc:  # the reader's block timeout still picks the key up
            log.warning("fanout wake failed: %s", exc)

    async def _run(self) -> None:
        failures = 0
        while True:
            streams = {k: t.cursor for k, t in self.topics.items() if t.cursor is not None}
            if not streams:
                self.changed.clear()
                await self.changed.wait()
                continue
            self.changed.clear()
            self.wake_sent = False
            streams[self.wake_key] = self.wake_cursor
            self.reading = True
            try:
                reply: Any = await self.fanout.client.xread(
                    streams,  # type: ignore[arg-type]
                    count=FANOUT_READ_COUNT,
                    block=FANOUT_BLOCK_MS,
                )
                failures = 0
            except redis.RedisError as exc:
                delay = RETRY_BACKOFF_S[min(failures, len(RETRY_BACKOFF_S) - 1)]
                failures += 1
                log.warning("fanout read failed (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            finally:
                self.reading = False
            for raw_key, entries in reply or ():
                key = _text(raw_key)
                if key == self.wake_key:
                    self.wake_cursor = _text(entries[-1][0])
                else:
                    self._deliver(key, entries)

    def _deliver(self, key: str, entries: list[tuple[Any, dict[Any, Any]]]) -> None:
        topic = self.topics.get(key)
        if topic is None or topic.cursor is None:
            return
        floor = id_key(topic.cursor)
        for entry_id, fields in entries:
            frame = to_frame(entry_id, fields)
            if frame is None:
                topic.cursor = _text(entry_id)
                continue
            if frame.key <= floor:
                continue  # read before this topic was (re)started
            topic.cursor = frame.id
            floor = frame.key
            for subscriber in list(topic.subscribers):
                subscriber.push(frame)


class Fanout:
    """The process's shared reader. Create inside the running loop; `aclose` at shutdown."""

    def __init__(self, client: aredis.Redis) -> None:
        self.client = client
        self.process_id = uuid.uuid4().hex[:12]
        self._topics: dict[str, _Topic] = {}
        self._shards: list[_Shard] = []
        self._background: set[asyncio.Task[None]] = set()

    @property
    def topic_count(self) -> int:
        return len(self._topics)

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def subscribe(self, conv_id: str, capacity: int) -> Subscription:
        """A subscription that receives every live entry appended after this call returns (and possibly
        some before: callers drop ids they already sent)."""
        key = live_key(conv_id)
        subscription = Subscription(self, key, capacity)
        topic = self._topics.get(key)
        if topic is None:
            topic = self._topics[key] = _Topic(key, asyncio.get_running_loop())
            topic.subscribers.add(subscription)
            self.spawn(self._start(topic))
        else:
            topic.subscribers.add(subscription)
        try:
            await asyncio.shield(topic.started)
        except BaseException:
            subscription.close()
            raise
        return subscription

    async def _start(self, topic: _Topic) -> None:
        try:
            tail: Any = await self.client.xrevrange(topic.key, "+", "-", count=1)
        except redis.RedisError as exc:
            if self._topics.get(topic.key) is topic:
                del self._topics[topic.key]
            topic.started.set_exception(exc)
            topic.started.exception()  # retrieved: waiters re-raise their own copy
            return
        topic.cursor = _text(tail[0][0]) if tail else "0-0"
        if self._topics.get(topic.key) is topic:
            self._shard_with_room().add(topic)
        topic.started.set_result(None)

    def _shard_with_room(self) -> _Shard:
        for shard in self._shards:
            if len(shard.topics) < FANOUT_BATCH_KEYS:
                return shard
        shard = _Shard(self, len(self._shards))
        self._shards.append(shard)
        return shard

    def unsubscribe(self, subscription: Subscription) -> None:
        topic = self._topics.get(subscription.key)
        if topic is None:
            return
        topic.subscribers.discard(subscription)
        if not topic.subscribers:
            del self._topics[topic.key]
            if topic.shard is not None:
                topic.shard.topics.pop(topic.key, None)  # left out of the batch's next XREAD

    async def aclose(self) -> None:
        tasks = [s.task for s in self._shards] + list(self._background)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._shards.clear()
        self._topics.clear()


async def _last_turn_finished(client: aredis.Redis, conv_id: str) -> int:
    """The highest turn whose terminal event is logged: its deltas need no replay."""
    last: Any = await client.xrevrange(log_key(conv_id), "+", "-", count=1)
    if not last:
        return -1
    frame = to_frame(*last[0])
    if frame is None:
        return -1
    return frame.turn if frame.terminal else frame.turn - 1


async def replay(client: aredis.Redis, conv_id: str, after_id: str | None) -> AsyncIterator[list[LiveFrame]]:
    """Pages of frames after `after_id` (None: the whole conversation), in id order, each id once.

    While the live stream still holds `after_id` (its head is at or before it) it is read alone. Past its
    cap, durable events between `after_id` and the live head come from the log first; the head is read
    with each live page in one transaction, so trimming during the replay cannot open a gap.
    """
    live, durable = live_key(conv_id), log_key(conv_id)
    cursor = after_id or "0-0"
    finished_turn = await _last_turn_finished(client, conv_id)

    def frames(entries: list[tuple[Any, dict[Any, Any]]]) -> list[LiveFrame]:
        decoded = (to_frame(entry_id, fields) for entry_id, fields in entries)
        return [f for f in decoded if f is not None and not (f.is_delta and f.turn <= finished_turn)]

    while True:
        async with client.pipeline(transaction=True) as pipe:
            pipe.xrange(live, f"({cursor}", "+", count=REPLAY_PAGE_ENTRIES)
            pipe.xrange(live, "-", "+", count=1)
            page, head = await pipe.execute()
        head_id = _text(head[0][0]) if head else None
        if head_id is None or id_key(head_id) > id_key(cursor):
            end = f"({head_id}" if head_id else "+"
            gap: Any = await client.xrange(durable, f"({cursor}", end, count=REPLAY_PAGE_ENTRIES)
            if gap:
                cursor = _text(gap[-1][0])
                yield frames(gap)
                continue
        if not page:
            return
        cursor = _text(page[-1][0])
        yield frames(page)
        if len(page) < REPLAY_PAGE_ENTRIES:
            return
