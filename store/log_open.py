"""An activation's opening read in one script call (`lease_open.lua`): the conversation's fenced lease taken
with a new epoch, its latest snapshot, the log entries after it and the inbox entries after the cursor.

    opened = open_activation(log, conv_id, owner, ttl_ms)   Opened, or None for a conversation with no log
                                                            and no inbox entry (then nothing is written);
                                                            LeaseHeld as `ConversationLog.acquire`

It replaces six round trips an activation made before its first action (the log's and the inbox's
lengths, acquire, the snapshot, the tail, the inbox cursor and its entries). A tail longer than one page
is read on with `store.log.read_plan`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from store.exceptions import LeaseHeld
from store.log import (
    EMPTY_ID,
    INBOX_TAKE_COUNT,
    LEASE_TTL_MS,
    READ_PAGE_ENTRIES,
    ConversationLog,
    Entry,
    Lease,
    Snapshot,
    checked_owner,
    conv_keys,
    decoded_event,
    lease_held,
    positive,
    read_plan,
    snapshot_of,
)
from store.scripts import Arg, Eval, Plan, lua, range_entries, text

OPEN = lua("common.lua", "lease_open.lua")


class Opened(msgspec.Struct, frozen=True, kw_only=True):
    lease: Lease
    snapshot: Snapshot | None
    tail: list[Entry]  # the log after the snapshot (all of it without one)
    inbox_cursor: str  # the last inbox entry moved into the log (EMPTY_ID: none)
    inbox: list[Entry]  # up to `inbox_count` entries after it, oldest first


def open_plan(conv_id: str, owner: str, ttl_ms: int, inbox_count: int) -> Plan[Opened | None]:
    keys = conv_keys(conv_id)
    script_keys = [keys.lease, keys.epoch, keys.log, keys.inbox, keys.snap, keys.inbox_cursor]
    args: list[Arg] = [
        checked_owner(owner), positive(ttl_ms, "ttl_ms"), READ_PAGE_ENTRIES, positive(inbox_count, "count")
    ]  # fmt: skip
    try:
        reply = yield Eval(OPEN, script_keys, args)
    except LeaseHeld as held:
        raise lease_held(conv_id, held) from None
    if not reply:
        return None
    epoch, expires, snap_fields, tail_raw, cursor, inbox_raw = reply
    tail = _entries(tail_raw)
    if len(tail) == READ_PAGE_ENTRIES:
        tail += yield from read_plan(conv_id, tail[-1][0], None)
    snapshot = dict(zip(snap_fields[::2], snap_fields[1::2], strict=True))
    lease = Lease(conv_id=conv_id, owner=owner, epoch=int(epoch), expires_at_ms=int(expires), ttl_ms=ttl_ms)
    return Opened(
        lease=lease,
        snapshot=snapshot_of(snapshot) if snapshot else None,
        tail=tail,
        inbox_cursor=text(cursor) or EMPTY_ID,
        inbox=_entries(inbox_raw),
    )


def _entries(raw: Any) -> list[Entry]:
    return [decoded_event(i, f) for i, f in range_entries(raw)]


def open_activation(
    log: ConversationLog,
    conv_id: str,
    owner: str,
    ttl_ms: int = LEASE_TTL_MS,
    inbox_count: int = INBOX_TAKE_COUNT,
) -> Opened | None:
    return log.run(open_plan(conv_id, owner, ttl_ms, inbox_count))
