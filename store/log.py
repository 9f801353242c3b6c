"""The conversation log: a fenced, single-writer Redis Stream per conversation, its live mirror, its inbox.

Keys (hash-tagged by conversation id, so Redis Cluster keeps a conversation in one slot):

    conv:{id}:log           durable Stream of `store.events.Event`, field `e` = msgspec JSON
    conv:{id}:live          capped Stream (MAXLEN ~ LIVE_MAXLEN): every durable event mirrored under the
                            same id, plus `Delta` token fragments; expires LIVE_TTL_MS after its last write
    conv:{id}:lease         hash: owner, epoch, expires (Redis server ms)
    conv:{id}:epoch         monotonic fencing counter
    conv:{id}:snap          hash: state (opaque bytes), last_id, epoch, at_ms
    conv:{id}:inbox         Stream of inbound `Event`s written by the web process (never the log itself)
    conv:{id}:inbox_cursor  id of the last inbox entry moved into the log, advanced by the append itself
    conv:{id}:inbox_seen:<client id>   dedup marker: the inbox id a client id was posted as

One writer at a time: `acquire` takes the lease with a new epoch (`close_lease` saves the last snapshot
and gives it up in one call), and every write (append, snapshot) runs a Lua script that refuses an epoch
that is not the lease's current, unexpired one. Ids come from one sequence per conversation shared by the
log and the live stream: any id a client saw, durable or a token delta, is a valid resume point (`catch_up`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, TypeVar, get_args

import msgspec
import redis
import redis.asyncio as aredis

from store.events import Delta, Event, LiveItem, SentenceAttributed, decode_event, decode_live, encode
from store.exceptions import CorruptLog, InputError, LeaseHeld, LogError
from store.redis import async_client, sync_client
from store.scripts import (
    Arg,
    AsyncRunner,
    Batch,
    Call,
    Eval,
    Plan,
    SyncRunner,
    block_ms_arg,
    id_tuple,
    key_part,
    lua,
    payload,
    range_entries,
    read_start,
    stream_id,
    text,
    xread_entries,
)

LEASE_TTL_MS = 30_000
LIVE_MAXLEN = 2_000
LIVE_TTL_MS = 24 * 3600 * 1000
INBOX_DEDUP_TTL_MS = 24 * 3600 * 1000
READ_PAGE_ENTRIES = 1_000
LIVE_READ_COUNT = 500
INBOX_TAKE_COUNT = 100
CATCH_UP_COUNT = 1_000
MAX_OWNER_CHARS = 200
EMPTY_ID = "0-0"

ACQUIRE = lua("common.lua", "lease_acquire.lua")
RENEW = lua("common.lua", "lease_renew.lua")
RELEASE = lua("common.lua", "lease_release.lua")
APPEND = lua("common.lua", "append.lua")
SAVE_SNAPSHOT = lua("common.lua", "snapshot_save.lua")
CLOSE_LEASE = lua("common.lua", "lease_close.lua")
POST_INBOX = lua("common.lua", "inbox_post.lua")

EVENT_TYPES: tuple[type, ...] = get_args(Event)
T = TypeVar("T")

Entry = tuple[str, Event]
LiveEntry = tuple[str, LiveItem]


class ConvKeys(NamedTuple):
    log: str
    live: str
    lease: str
    epoch: str
    snap: str
    inbox: str
    inbox_cursor: str

    def inbox_seen(self, client_id: str) -> str:
        return f"{self.inbox}_seen:{key_part(client_id, 'client_id')}"


def conv_keys(conv_id: str) -> ConvKeys:
    prefix = f"conv:{{{key_part(conv_id, 'conv_id')}}}"
    return ConvKeys(*(f"{prefix}:{name}" for name in ConvKeys._fields))


class Lease(msgspec.Struct, frozen=True, kw_only=True):
    """The right to write one conversation, as long as `epoch` is the lease's current epoch."""

    conv_id: str
    owner: str
    epoch: int
    expires_at_ms: int  # Redis server clock
    ttl_ms: int


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Folded state (opaque to the store) as of log entry `last_event_id`."""

    state: bytes
    last_event_id: str
    epoch: int
    at_ms: int


class Posted(msgspec.Struct, frozen=True, kw_only=True):
    inbox_id: str
    duplicate: bool  # this client id was posted before: nothing was written, `inbox_id` is the first post
    held: bool = False  # an activation held the lease at the post: its close reports the entry and wakes it


class LeaseClosed(msgspec.Struct, frozen=True, kw_only=True):
    released: bool  # False: this epoch no longer held the lease
    newer_inbox: bool  # the inbox holds an entry newer than the one the closer said it had seen


class LogOptions(msgspec.Struct, frozen=True, kw_only=True):
    live_maxlen: int = LIVE_MAXLEN
    live_ttl_ms: int = LIVE_TTL_MS
    inbox_dedup_ttl_ms: int = INBOX_DEDUP_TTL_MS


# ---- plans: each operation once, driven by the sync and async runners ----------------------------


def positive(value: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{what} must be a positive integer", field=what)
    return value


def checked_owner(owner: str) -> str:
    if not isinstance(owner, str) or not 0 < len(owner) <= MAX_OWNER_CHARS or not owner.isprintable():
        raise InputError(f"owner must be 1-{MAX_OWNER_CHARS} printable characters", field="owner")
    return owner


def lease_held(conv_id: str, held: LeaseHeld) -> LeaseHeld:
    """The script's LEASE_HELD "<expires_ms> <owner>" as the error callers get (who, until when)."""
    expires_ms, _, holder = held.message.partition(" ")
    return LeaseHeld(
        f"conversation {conv_id} is held by {holder} until {expires_ms}",
        conv_id=conv_id,
        owner=holder,
        expires_at_ms=int(expires_ms),
    )


def acquire_plan(conv_id: str, owner: str, ttl_ms: int) -> Plan[Lease]:
    keys = conv_keys(conv_id)
    try:
        args: list[Arg] = [checked_owner(owner), positive(ttl_ms, "ttl_ms")]
        epoch, expires = yield Eval(ACQUIRE, [keys.lease, keys.epoch], args)
    except LeaseHeld as held:
        raise lease_held(conv_id, held) from None
    return Lease(conv_id=conv_id, owner=owner, epoch=int(epoch), expires_at_ms=int(expires), ttl_ms=ttl_ms)


def renew_plan(lease: Lease, ttl_ms: int | None) -> Plan[Lease]:
    ttl_ms = positive(lease.ttl_ms if ttl_ms is None else ttl_ms, "ttl_ms")
    keys = conv_keys(lease.conv_id)
    expires = yield Eval(RENEW, [keys.lease], [lease.epoch, ttl_ms])
    return msgspec.structs.replace(lease, expires_at_ms=int(expires), ttl_ms=ttl_ms)


def release_plan(lease: Lease) -> Plan[bool]:
    released = yield Eval(RELEASE, [conv_keys(lease.conv_id).lease], [lease.epoch])
    return bool(released)


def close_lease_plan(
    lease: Lease, snapshot: tuple[bytes, str] | None, inbox_seen: str | None
) -> Plan[LeaseClosed]:
    keys = conv_keys(lease.conv_id)
    args: list[Arg] = [lease.epoch, "" if inbox_seen is None else stream_id(inbox_seen, "inbox_seen")]
    if snapshot is not None:
        state, last_event_id = snapshot
        if not isinstance(state, bytes):
            raise InputError("snapshot state must be bytes", field="state")
        args += [stream_id(last_event_id, "last_event_id"), state]
    released, newer = yield Eval(CLOSE_LEASE, [keys.lease, keys.snap, keys.log, keys.inbox], args)
    return LeaseClosed(released=bool(released), newer_inbox=bool(newer))


def _flag(item: object) -> str:
    if isinstance(item, Delta | SentenceAttributed):
        return "l"
    if isinstance(item, EVENT_TYPES):
        return "d"
    raise InputError(f"cannot append a {type(item).__name__}: only store.events items", field="items")


def append_plan(
    lease: Lease, items: Sequence[LiveItem], expected: str | None, cursor: str | None, options: LogOptions
) -> Plan[list[str]]:
    call = append_call(lease, items, expected, cursor, options)
    reply = [] if call is None else (yield call)
    return [text(i) for i in reply[:-1]]


def append_call(
    lease: Lease, items: Sequence[LiveItem], expected: str | None, cursor: str | None, options: LogOptions
) -> Eval | None:
    """The fenced append's script call (None: nothing to write). Its reply: the new ids in order, then the
    inbox's newest entry as the append left it (`store.log_append`)."""
    keys = conv_keys(lease.conv_id)
    args: list[Arg] = [
        lease.epoch,
        "" if expected is None else stream_id(expected, "expected_last_id"),
        options.live_maxlen,
        options.live_ttl_ms,
        "" if cursor is None else stream_id(cursor, "inbox_cursor"),
    ]
    for item in items:
        args += [_flag(item), encode(item)]
    if not items and cursor is None:
        return None
    return Eval(APPEND, [keys.log, keys.live, keys.lease, keys.inbox_cursor, keys.inbox], args)


def decoded_event(entry_id: Any, fields: dict[Any, Any]) -> Entry:
    id_ = text(entry_id)
    try:
        return id_, decode_event(payload(fields))
    except (KeyError, msgspec.DecodeError) as exc:  # ValidationError is a DecodeError
        raise CorruptLog(f"entry {id_} is not a valid event: {exc}", entry_id=id_) from None


def _decoded_live(entry_id: Any, fields: dict[Any, Any]) -> LiveEntry:
    id_ = text(entry_id)
    try:
        return id_, decode_live(payload(fields))
    except (KeyError, msgspec.DecodeError) as exc:
        raise CorruptLog(f"live entry {id_} is not a valid item: {exc}", entry_id=id_) from None


def _after(after_id: str) -> str:
    """The exclusive XRANGE start after `after_id` ('0' = from the beginning)."""
    return "(" + stream_id(after_id)


def _xrange(key: str, start: str, count: int) -> Call:
    return Call(lambda r: r.xrange(key, start, "+", count=count))


def read_plan(conv_id: str, after_id: str, count: int | None) -> Plan[list[Entry]]:
    key = conv_keys(conv_id).log
    wanted = None if count is None else positive(count, "count")
    start = _after(after_id)
    entries: list[Entry] = []
    while wanted is None or len(entries) < wanted:
        page = READ_PAGE_ENTRIES if wanted is None else min(READ_PAGE_ENTRIES, wanted - len(entries))
        raw = yield _xrange(key, start, page)
        entries += [decoded_event(i, f) for i, f in raw]
        if len(raw) < page:
            break
        start = "(" + entries[-1][0]
    return entries


def read_live_plan(conv_id: str, after_id: str, block_ms: int | None, count: int) -> Plan[list[LiveEntry]]:
    key = conv_keys(conv_id).live
    start, block, count = read_start(after_id), block_ms_arg(block_ms), positive(count, "count")
    reply = yield Call(lambda r: r.xread({key: start}, count=count, block=block))
    return [_decoded_live(i, f) for i, f in xread_entries(reply)]


def catch_up_plan(conv_id: str, after_id: str, count: int) -> Plan[list[LiveEntry]]:
    keys = conv_keys(conv_id)
    start = _after(after_id)
    count = positive(count, "count")

    def both(pipe: Any) -> None:
        pipe.xrange(keys.live, start, "+", count=count)
        pipe.xrange(keys.log, start, "+", count=count)

    live_raw, log_raw = yield Batch(both, transaction=True)
    live = [_decoded_live(i, f) for i, f in range_entries(live_raw)]
    # Durable events older than the live stream's oldest entry were trimmed from it: take them from the log.
    first_live = id_tuple(live[0][0]) if live else None
    gap: list[LiveEntry] = [
        entry for entry in (decoded_event(i, f) for i, f in range_entries(log_raw))
        if first_live is None or id_tuple(entry[0]) < first_live
    ]  # fmt: skip
    return (gap + live)[:count]


def last_id_plan(conv_id: str) -> Plan[str]:
    key = conv_keys(conv_id).log
    newest = yield Call(lambda r: r.xrevrange(key, "+", "-", count=1))
    return text(newest[0][0]) if newest else EMPTY_ID


def length_plan(conv_id: str) -> Plan[int]:
    key = conv_keys(conv_id).log
    return int((yield Call(lambda r: r.xlen(key))))


def save_snapshot_plan(lease: Lease, state: bytes, last_event_id: str) -> Plan[None]:
    if not isinstance(state, bytes):
        raise InputError("snapshot state must be bytes", field="state")
    keys = conv_keys(lease.conv_id)
    last = stream_id(last_event_id, "last_event_id")
    yield Eval(SAVE_SNAPSHOT, [keys.snap, keys.lease, keys.log], [lease.epoch, last, state])


def load_snapshot_plan(conv_id: str) -> Plan[Snapshot | None]:
    key = conv_keys(conv_id).snap
    raw = yield Call(lambda r: r.hgetall(key))
    return snapshot_of(raw) if raw else None


def snapshot_of(raw: dict[Any, Any]) -> Snapshot:
    """A snapshot from its hash's fields (bytes or str names and values)."""
    fields = {text(k): v for k, v in raw.items()}
    state = fields["state"]
    return Snapshot(
        state=state if isinstance(state, bytes) else state.encode(),
        last_event_id=text(fields["last_id"]),
        epoch=int(fields["epoch"]),
        at_ms=int(fields["at_ms"]),
    )


def read_from_snapshot_plan(conv_id: str) -> Plan[tuple[Snapshot | None, list[Entry]]]:
    snapshot = yield from load_snapshot_plan(conv_id)
    tail = yield from read_plan(conv_id, snapshot.last_event_id if snapshot else EMPTY_ID, None)
    return snapshot, tail


def post_inbox_plan(conv_id: str, item: Event, client_id: str, options: LogOptions) -> Plan[Posted]:
    if not isinstance(item, EVENT_TYPES):
        raise InputError(f"cannot post a {type(item).__name__} to an inbox: only store.events Events")
    keys = conv_keys(conv_id)
    script_keys = [keys.inbox, keys.lease, *([keys.inbox_seen(client_id)] if client_id else [])]
    reply = yield Eval(POST_INBOX, script_keys, [encode(item), options.inbox_dedup_ttl_ms])
    inbox_id, duplicate, held = reply
    return Posted(inbox_id=text(inbox_id), duplicate=bool(duplicate), held=bool(held))


def inbox_cursor_plan(conv_id: str) -> Plan[str]:
    key = conv_keys(conv_id).inbox_cursor
    cursor = yield Call(lambda r: r.get(key))
    return text(cursor) if cursor else EMPTY_ID


def take_inbox_plan(lease: Lease, count: int, after: str | None) -> Plan[list[Entry]]:
    start = after if after is not None else (yield from inbox_cursor_plan(lease.conv_id))
    return (yield from inbox_after_plan(lease.conv_id, start, count))


def inbox_after_plan(conv_id: str, after_id: str, count: int) -> Plan[list[Entry]]:
    raw = yield _xrange(conv_keys(conv_id).inbox, _after(after_id), positive(count, "count"))
    return [decoded_event(i, f) for i, f in raw]


def inbox_length_plan(conv_id: str) -> Plan[int]:
    key = conv_keys(conv_id).inbox
    return int((yield Call(lambda r: r.xlen(key))))


# ---- the two front ends ----------------------------------------------------------------------------


class ConversationLog:
    """Blocking API, for dramatiq actor threads (and tests, tools, benches). Thread-safe."""

    def __init__(self, client: redis.Redis, options: LogOptions | None = None) -> None:
        self.client = client
        self._run = SyncRunner(client, unavailable=LogError).run
        self.options = options or LogOptions()

    @classmethod
    def from_url(cls, url: str, options: LogOptions | None = None) -> ConversationLog:
        return cls(sync_client(url), options)

    def run(self, plan: Plan[T]) -> T:
        """Another store module's plan on this log's client (`store.log_open`)."""
        return self._run(plan)

    def close(self) -> None:
        self.client.close()

    # Lease.
    def acquire(self, conv_id: str, owner: str, ttl_ms: int = LEASE_TTL_MS) -> Lease:
        """A new lease with epoch + 1; LeaseHeld while another owner's lease is unexpired. The same owner
        acquiring again also gets a new epoch, which fences its own older handle."""
        return self._run(acquire_plan(conv_id, owner, ttl_ms))

    def renew(self, lease: Lease, ttl_ms: int | None = None) -> Lease:
        """The lease extended by `ttl_ms` from now; StaleEpoch if it expired or was taken over."""
        return self._run(renew_plan(lease, ttl_ms))

    def release(self, lease: Lease) -> bool:
        """Let the next worker in at once; False when this epoch no longer held the lease."""
        return self._run(release_plan(lease))

    def close_lease(
        self, lease: Lease, *, snapshot: tuple[bytes, str] | None = None, inbox_seen: str | None = None
    ) -> LeaseClosed:
        """An activation's end in one script call: `save_snapshot(lease, *snapshot)` when given (StaleEpoch
        if refused: then nothing is released), `release`, and whether the inbox holds an entry newer than
        `inbox_seen` (an ask posted since the holder last looked)."""
        return self._run(close_lease_plan(lease, snapshot, inbox_seen))

    # Writing (fenced).
    def append(
        self,
        lease: Lease,
        items: Sequence[LiveItem],
        *,
        expected_last_id: str | None = None,
        inbox_cursor: str | None = None,
    ) -> list[str]:
        """Append events (log + live) and deltas (live only) in order; returns their ids.

        StaleEpoch when the lease is not this epoch's or expired, or when `expected_last_id` is given
        and the log no longer ends there. `inbox_cursor` records, atomically with the append, the last
        inbox entry these items consume.
        """
        return self._run(append_plan(lease, items, expected_last_id, inbox_cursor, self.options))

    def save_snapshot(self, lease: Lease, state: bytes, last_event_id: str) -> None:
        self._run(save_snapshot_plan(lease, state, last_event_id))

    # Reading.
    def read(self, conv_id: str, after_id: str = "0", count: int | None = None) -> list[Entry]:
        return self._run(read_plan(conv_id, after_id, count))

    def read_live(
        self, conv_id: str, after_id: str = "$", block_ms: int | None = None, count: int = LIVE_READ_COUNT
    ) -> list[LiveEntry]:
        return self._run(read_live_plan(conv_id, after_id, block_ms, count))

    def catch_up(self, conv_id: str, after_id: str, count: int = CATCH_UP_COUNT) -> list[LiveEntry]:
        """What a client missed after `after_id`: the live stream, plus the log where live was trimmed."""
        return self._run(catch_up_plan(conv_id, after_id, count))

    def last_id(self, conv_id: str) -> str:
        return self._run(last_id_plan(conv_id))

    def length(self, conv_id: str) -> int:
        return self._run(length_plan(conv_id))

    def load_snapshot(self, conv_id: str) -> Snapshot | None:
        return self._run(load_snapshot_plan(conv_id))

    def read_from_snapshot(self, conv_id: str) -> tuple[Snapshot | None, list[Entry]]:
        """The latest snapshot and only the events after it (all events when there is none)."""
        return self._run(read_from_snapshot_plan(conv_id))

    # Inbox.
    def post_inbox(self, conv_id: str, item: Event, client_id: str = "") -> Posted:
        return self._run(post_inbox_plan(conv_id, item, client_id, self.options))

    def take_inbox(
        self, lease: Lease, count: int = INBOX_TAKE_COUNT, *, after: str | None = None
    ) -> list[Entry]:
        """Inbox entries not yet consumed by an append (`inbox_cursor`), oldest first.

        `after`: the cursor as the lease holder last read or moved it (only its appends move it), which
        saves reading it again."""
        return self._run(take_inbox_plan(lease, count, after))

    def inbox_after(self, conv_id: str, after_id: str, count: int = INBOX_TAKE_COUNT) -> list[Entry]:
        """Inbox entries posted after `after_id` (consumed or not), oldest first; no lease needed."""
        return self._run(inbox_after_plan(conv_id, after_id, count))

    def inbox_cursor(self, conv_id: str) -> str:
        return self._run(inbox_cursor_plan(conv_id))

    def inbox_length(self, conv_id: str) -> int:
        """How many inbox entries wait to be consumed (consumed ones are trimmed by the append)."""
        return self._run(inbox_length_plan(conv_id))


class AsyncConversationLog:
    """The same API for asyncio (the web process); see `ConversationLog` for each method's contract."""

    def __init__(self, client: aredis.Redis, options: LogOptions | None = None) -> None:
        self.client = client
        self._run = AsyncRunner(client, unavailable=LogError).run
        self.options = options or LogOptions()

    @classmethod
    def from_url(cls, url: str, options: LogOptions | None = None) -> AsyncConversationLog:
        return cls(async_client(url), options)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def acquire(self, conv_id: str, owner: str, ttl_ms: int = LEASE_TTL_MS) -> Lease:
        return await self._run(acquire_plan(conv_id, owner, ttl_ms))

    async def renew(self, lease: Lease, ttl_ms: int | None = None) -> Lease:
        return await self._run(renew_plan(lease, ttl_ms))

    async def release(self, lease: Lease) -> bool:
        return await self._run(release_plan(lease))

    async def close_lease(
        self, lease: Lease, *, snapshot: tuple[bytes, str] | None = None, inbox_seen: str | None = None
    ) -> LeaseClosed:
        return await self._run(close_lease_plan(lease, snapshot, inbox_seen))

    async def append(
        self,
        lease: Lease,
        items: Sequence[LiveItem],
        *,
        expected_last_id: str | None = None,
        inbox_cursor: str | None = None,
    ) -> list[str]:
        return await self._run(append_plan(lease, items, expected_last_id, inbox_cursor, self.options))

    async def save_snapshot(self, lease: Lease, state: bytes, last_event_id: str) -> None:
        await self._run(save_snapshot_plan(lease, state, last_event_id))

    async def read(self, conv_id: str, after_id: str = "0", count: int | None = None) -> list[Entry]:
        return await self._run(read_plan(conv_id, after_id, count))

    async def read_live(
        self, conv_id: str, after_id: str = "$", block_ms: int | None = None, count: int = LIVE_READ_COUNT
    ) -> list[LiveEntry]:
        return await self._run(read_live_plan(conv_id, after_id, block_ms, count))

    async def catch_up(self, conv_id: str, after_id: str, count: int = CATCH_UP_COUNT) -> list[LiveEntry]:
        return await self._run(catch_up_plan(conv_id, after_id, count))

    async def last_id(self, conv_id: str) -> str:
        return await self._run(last_id_plan(conv_id))

    async def length(self, conv_id: str) -> int:
        return await self._run(length_plan(conv_id))

    async def load_snapshot(self, conv_id: str) -> Snapshot | None:
        return await self._run(load_snapshot_plan(conv_id))

    async def read_from_snapshot(self, conv_id: str) -> tuple[Snapshot | None, list[Entry]]:
        return await self._run(read_from_snapshot_plan(conv_id))

    async def post_inbox(self, conv_id: str, item: Event, client_id: str = "") -> Posted:
        return await self._run(post_inbox_plan(conv_id, item, client_id, self.options))

    async def take_inbox(
        self, lease: Lease, count: int = INBOX_TAKE_COUNT, *, after: str | None = None
    ) -> list[Entry]:
        return await self._run(take_inbox_plan(lease, count, after))

    async def inbox_cursor(self, conv_id: str) -> str:
        return await self._run(inbox_cursor_plan(conv_id))

    async def inbox_length(self, conv_id: str) -> int:
        return await self._run(inbox_length_plan(conv_id))
