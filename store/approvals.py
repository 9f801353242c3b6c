"""The approvals ledger: one record per high-risk tool call awaiting a human, decided exactly once.

Keys:

    appr:{<approval id>}                 hash: the `ApprovalRecord` fields (the compare-and-set point)
    room:{<tenant>}:{<room>}:pending     sorted set of pending approval ids, scored by created_ms
    room:{<tenant>}:{<room>}:events      capped Stream of `RoomEvent`s (field `e`), so a reviewer console
                                         can resume from the last id it saw (a Stream, not Pub/Sub)
    appr_audit:{<tenant>}                sorted set of decided/expired approval ids, scored by decided_ms
    appr_audit:{<tenant>}:tool:<tool>    the same, per tool

A decision is a compare-and-set on the approval's own hash (one key, so Redis Cluster-safe). The room
queue, audit indexes and room stream all live in the tenant's slot and are updated by a second script
that is idempotent: if a process dies between the two, the next `list_pending` of that room repairs it.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
import redis
import redis.asyncio as aredis

from store.clock import now_ms
from store.events import Decision
from store.exceptions import DocentError, InputError, Unavailable
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
    key_part,
    lua,
    payload,
    read_start,
    text,
    xread_entries,
)

ROOM_EVENTS_MAXLEN = 1_000
MAX_REASON_CHARS = 2_000
MAX_ARGS_BYTES = 64 * 1024
LIST_LIMIT = 100
ROOM_READ_COUNT = 100

CREATE = lua("approval_create.lua")
DECIDE = lua("approval_decide.lua")
ENQUEUE = lua("approval_enqueue.lua")
SETTLE = lua("approval_settle.lua")

State = Literal["pending", "approved", "denied", "expired"]
DECISIONS: tuple[str, ...] = ("approved", "denied")


class ApprovalRecord(msgspec.Struct, frozen=True, kw_only=True):
    approval_id: str
    conv_id: str
    tenant: str
    room: str
    tool: str
    args: str  # the exact arguments, JSON text
    args_hash: str
    requested_by: str
    reason: str = ""  # the agent's stated reason
    created_ms: int
    expires_ms: int
    state: State = "pending"
    reviewer: str = ""
    decision_reason: str = ""
    decided_ms: int = 0


class RoomEvent(msgspec.Struct, frozen=True, kw_only=True):
    kind: Literal["requested", "decided", "expired", "reminder"]  # reminder: actors.approvals, before expiry
    record: ApprovalRecord


class Decided(msgspec.Struct, frozen=True, kw_only=True):
    """This call moved the approval out of pending (to approved/denied, or expired for `expire`)."""

    record: ApprovalRecord
    ok: bool = True


class AlreadyDecided(msgspec.Struct, frozen=True, kw_only=True):
    """Someone (or the clock) got there first; nothing was changed by this call."""

    by: str  # the winning reviewer; "" when it expired
    decision: State
    at_ms: int
    record: ApprovalRecord
    ok: bool = False


class NotDue(msgspec.Struct, frozen=True, kw_only=True):
    """`expire` was called before the approval's expiry; nothing was changed."""

    expires_ms: int
    ok: bool = False


# ---- keys and encoding -------------------------------------------------------------------------------


def approval_key(approval_id: str) -> str:
    return f"appr:{{{key_part(approval_id, 'approval_id')}}}"


def reminded_key(approval_id: str) -> str:
    """Set once when the approval's reminder went out (the reminder timer's `SET NX`)."""
    return f"{approval_key(approval_id)}:reminded"


def room_pending_key(tenant: str, room: str) -> str:
    return f"room:{{{key_part(tenant, 'tenant')}}}:{{{key_part(room, 'room')}}}:pending"


def room_events_key(tenant: str, room: str) -> str:
    return f"room:{{{key_part(tenant, 'tenant')}}}:{{{key_part(room, 'room')}}}:events"


def audit_key(tenant: str) -> str:
    return f"appr_audit:{{{key_part(tenant, 'tenant')}}}"


def audit_tool_key(tenant: str, tool: str) -> str:
    return f"{audit_key(tenant)}:tool:{key_part(tool, 'tool')}"


_room_event_encoder = msgspec.json.Encoder()
_room_event_decoder = msgspec.json.Decoder(RoomEvent)


def _hash_fields(record: ApprovalRecord) -> list[str]:
    return [part for name, value in msgspec.structs.asdict(record).items() for part in (name, str(value))]


def _record(flat: list[Any]) -> ApprovalRecord:
    pairs = dict(zip(map(text, flat[::2]), map(text, flat[1::2]), strict=True))
    return _record_from_dict(pairs)


def _record_from_dict(fields: dict[str, str]) -> ApprovalRecord:
    try:
        return msgspec.convert(fields, ApprovalRecord, strict=False)
    except msgspec.ValidationError as exc:
        raise DocentError(f"approval record {fields.get('approval_id', '?')} is malformed: {exc}") from None


def _check_new(record: ApprovalRecord) -> None:
    for name in ("approval_id", "conv_id", "tenant", "room", "tool"):
        key_part(getattr(record, name), name)
    if record.state != "pending" or record.reviewer or record.decided_ms:
        raise InputError("a new approval must be pending and undecided", field="state")
    if record.expires_ms <= record.created_ms:
        raise InputError("an approval must expire after it is created", field="expires_ms")
    if not record.args_hash:
        raise InputError("an approval must carry the hash of its arguments", field="args_hash")
    if len(record.args.encode()) > MAX_ARGS_BYTES:
        raise InputError(f"approval arguments exceed {MAX_ARGS_BYTES} bytes", field="args")
    try:
        msgspec.json.decode(record.args)
    except msgspec.DecodeError:
        raise InputError("approval arguments must be JSON text", field="args") from None


# ---- plans -------------------------------------------------------------------------------------------


def _announce(record: ApprovalRecord) -> bytes:
    kind: Literal["requested", "decided", "expired"]
    match record.state:
        case "pending":
            kind = "requested"
        case "expired":
            kind = "expired"
        case _:
            kind = "decided"
    return _room_event_encoder.encode(RoomEvent(kind=kind, record=record))


def _settle(record: ApprovalRecord) -> Plan[bool]:
    keys = [
        room_pending_key(record.tenant, record.room),
        audit_key(record.tenant),
        audit_tool_key(record.tenant, record.tool),
        room_events_key(record.tenant, record.room),
    ]
    args: list[Arg] = [record.approval_id, record.decided_ms, _announce(record), ROOM_EVENTS_MAXLEN]
    return bool((yield Eval(SETTLE, keys, args)))


def create_plan(record: ApprovalRecord) -> Plan[ApprovalRecord]:
    _check_new(record)
    created, flat = yield Eval(CREATE, [approval_key(record.approval_id)], _hash_fields(record))
    stored = _record(flat)
    if not created and (stored.args_hash, stored.conv_id) != (record.args_hash, record.conv_id):
        raise InputError(f"approval {record.approval_id} exists for other arguments", field="approval_id")
    if stored.state == "pending":
        keys = [
            room_pending_key(stored.tenant, stored.room),
            audit_key(stored.tenant),
            room_events_key(stored.tenant, stored.room),
        ]
        args: list[Arg] = [stored.approval_id, stored.created_ms, _announce(stored), ROOM_EVENTS_MAXLEN]
        yield Eval(ENQUEUE, keys, args)
    return stored


def _transition(
    approval_id: str, mode: str, decision: str, reviewer: str, reason: str, at_ms: int, tenant: str
) -> Plan[tuple[str, ApprovalRecord]]:
    key = approval_key(approval_id)
    try:
        outcome, flat = yield Eval(DECIDE, [key], [mode, decision, reviewer, reason, at_ms, tenant])
    except InputError:
        raise InputError(f"no approval {approval_id}", field="approval_id") from None
    outcome, record = text(outcome), _record(flat)
    if outcome in ("decided", "expired"):
        yield from _settle(record)
    return outcome, record


def _lost(record: ApprovalRecord) -> AlreadyDecided:
    return AlreadyDecided(by=record.reviewer, decision=record.state, at_ms=record.decided_ms, record=record)


def decide_plan(
    approval_id: str, decision: str, reviewer: str, reason: str, at_ms: int | None, tenant: str | None
) -> Plan[Decided | AlreadyDecided]:
    if decision not in DECISIONS:
        raise InputError(f"decision must be one of {', '.join(DECISIONS)}", field="decision")
    key_part(reviewer, "reviewer")
    if len(reason) > MAX_REASON_CHARS:
        raise InputError(f"reason exceeds {MAX_REASON_CHARS} characters", field="reason")
    when = now_ms() if at_ms is None else at_ms
    scope = tenant or ""
    outcome, record = yield from _transition(approval_id, "decide", decision, reviewer, reason, when, scope)
    return Decided(record=record) if outcome == "decided" else _lost(record)


def expire_plan(approval_id: str, at_ms: int | None) -> Plan[Decided | AlreadyDecided | NotDue]:
    when = now_ms() if at_ms is None else at_ms
    outcome, record = yield from _transition(approval_id, "expire", "", "", "", when, "")
    match outcome:
        case "expired":
            return Decided(record=record)
        case "not_due":
            return NotDue(expires_ms=record.expires_ms)
        case _:
            return _lost(record)


def get_plan(approval_id: str) -> Plan[ApprovalRecord | None]:
    key = approval_key(approval_id)
    raw = yield Call(lambda r: r.hgetall(key))
    return _record_from_dict({text(k): text(v) for k, v in raw.items()}) if raw else None


def _fetch(ids: list[str]) -> Plan[list[dict[str, str]]]:
    if not ids:
        return []

    def hgetall_each(pipe: Any) -> None:
        for approval_id in ids:
            pipe.hgetall(approval_key(approval_id))

    raw = yield Batch(hgetall_each, transaction=False)
    return [{text(k): text(v) for k, v in fields.items()} for fields in raw]


def _limit(limit: int) -> int:
    if not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise InputError("limit must be between 1 and 1000", field="limit")
    return limit


def _zrem(key: str, member: str) -> Call:
    return Call(lambda r: r.zrem(key, member))


def list_pending_plan(tenant: str, room: str, limit: int) -> Plan[list[ApprovalRecord]]:
    key = room_pending_key(tenant, room)
    ids = [text(i) for i in (yield Call(lambda r: r.zrange(key, 0, _limit(limit) - 1)))]
    pending: list[ApprovalRecord] = []
    for approval_id, fields in zip(ids, (yield from _fetch(ids)), strict=True):
        if not fields:
            yield _zrem(key, approval_id)
            continue
        record = _record_from_dict(fields)
        if record.state == "pending":
            pending.append(record)
        else:
            yield from _settle(record)  # decided, but a crash left it queued
    return pending


def list_decisions_plan(
    tenant: str, tool: str | None, since_ms: int, until_ms: int | None, state: State | None, limit: int
) -> Plan[list[ApprovalRecord]]:
    key = audit_key(tenant) if tool is None else audit_tool_key(tenant, tool)
    top = "+inf" if until_ms is None else until_ms
    count = _limit(limit)
    raw = yield Call(lambda r: r.zrevrangebyscore(key, top, since_ms, start=0, num=count))
    ids = [text(i) for i in raw]
    records = [_record_from_dict(fields) for fields in (yield from _fetch(ids)) if fields]
    return [r for r in records if state is None or r.state == state]


def read_room_plan(
    tenant: str, room: str, after_id: str, block_ms: int | None, count: int
) -> Plan[list[tuple[str, RoomEvent]]]:
    key = room_events_key(tenant, room)
    start, block, count = read_start(after_id), block_ms_arg(block_ms), _limit(count)
    reply = yield Call(lambda r: r.xread({key: start}, count=count, block=block))
    return [(text(i), _room_event_decoder.decode(payload(f))) for i, f in xread_entries(reply)]


# ---- the two front ends ------------------------------------------------------------------------------


class ApprovalLedger:
    """Blocking API (actor threads create and expire; tests). Thread-safe."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._run = SyncRunner(client, unavailable=Unavailable).run

    @classmethod
    def from_url(cls, url: str) -> ApprovalLedger:
        return cls(sync_client(url))

    def close(self) -> None:
        self.client.close()

    def create(self, record: ApprovalRecord) -> ApprovalRecord:
        """Record a pending approval and queue it in its room; repeating it (same args) is a no-op."""
        return self._run(create_plan(record))

    def decide(
        self,
        approval_id: str,
        decision: Decision,
        reviewer: str,
        reason: str = "",
        now_ms: int | None = None,
        *,
        tenant: str | None = None,
    ) -> Decided | AlreadyDecided:
        """Compare-and-set: accepted only while pending and unexpired. `tenant` scopes the lookup."""
        return self._run(decide_plan(approval_id, decision, reviewer, reason, now_ms, tenant))

    def expire(self, approval_id: str, now_ms: int | None = None) -> Decided | AlreadyDecided | NotDue:
        return self._run(expire_plan(approval_id, now_ms))

    def get(self, approval_id: str) -> ApprovalRecord | None:
        return self._run(get_plan(approval_id))

    def list_pending(self, tenant: str, room: str, limit: int = LIST_LIMIT) -> list[ApprovalRecord]:
        """Oldest first."""
        return self._run(list_pending_plan(tenant, room, limit))

    def list_decisions(
        self,
        tenant: str,
        *,
        tool: str | None = None,
        since_ms: int = 0,
        until_ms: int | None = None,
        state: State | None = None,
        limit: int = LIST_LIMIT,
    ) -> list[ApprovalRecord]:
        """Newest first; `state` filters within the `limit` newest of the time range."""
        return self._run(list_decisions_plan(tenant, tool, since_ms, until_ms, state, limit))

    def read_room(
        self,
        tenant: str,
        room: str,
        after_id: str = "0",
        block_ms: int | None = None,
        count: int = ROOM_READ_COUNT,
    ) -> list[tuple[str, RoomEvent]]:
        return self._run(read_room_plan(tenant, room, after_id, block_ms, count))


class AsyncApprovalLedger:
    """The same API for asyncio (the web process: reviewer console, admin audit)."""

    def __init__(self, client: aredis.Redis) -> None:
        self.client = client
        self._run = AsyncRunner(client, unavailable=Unavailable).run

    @classmethod
    def from_url(cls, url: str) -> AsyncApprovalLedger:
        return cls(async_client(url))

    async def aclose(self) -> None:
        await self.client.aclose()

    async def create(self, record: ApprovalRecord) -> ApprovalRecord:
        return await self._run(create_plan(record))

    async def decide(
        self,
        approval_id: str,
        decision: Decision,
        reviewer: str,
        reason: str = "",
        now_ms: int | None = None,
        *,
        tenant: str | None = None,
    ) -> Decided | AlreadyDecided:
        return await self._run(decide_plan(approval_id, decision, reviewer, reason, now_ms, tenant))

    async def expire(self, approval_id: str, now_ms: int | None = None) -> Decided | AlreadyDecided | NotDue:
        return await self._run(expire_plan(approval_id, now_ms))

    async def get(self, approval_id: str) -> ApprovalRecord | None:
        return await self._run(get_plan(approval_id))

    async def list_pending(self, tenant: str, room: str, limit: int = LIST_LIMIT) -> list[ApprovalRecord]:
        return await self._run(list_pending_plan(tenant, room, limit))

    async def list_decisions(
        self,
        tenant: str,
        *,
        tool: str | None = None,
        since_ms: int = 0,
        until_ms: int | None = None,
        state: State | None = None,
        limit: int = LIST_LIMIT,
    ) -> list[ApprovalRecord]:
        return await self._run(list_decisions_plan(tenant, tool, since_ms, until_ms, state, limit))

    async def read_room(
        self,
        tenant: str,
        room: str,
        after_id: str = "0",
        block_ms: int | None = None,
        count: int = ROOM_READ_COUNT,
    ) -> list[tuple[str, RoomEvent]]:
        return await self._run(read_room_plan(tenant, room, after_id, block_ms, count))
