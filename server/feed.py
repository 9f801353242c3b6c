"""A conversation's feed to its sockets: live entries as encoded frames, and the replay that resumes a socket.

`to_frame` is the hub's decode function for `conv:{id}:live` keys: each entry is decoded and encoded as a
server frame once (and framed for the wire once), whatever the number of sockets following it.

`replay` is the catch-up a socket does after subscribing: everything after the client's last id, from the
live stream while it still holds that id, else durable events from the log up to the live stream's head.
The two overlap by design; sockets drop any frame whose id is not above the last one they sent.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import redis.asyncio as aredis

from server.hub import Fields, StreamKey, id_key
from server.protocol import DeltaFrame, EventFrame, encode
from server.ws_protocol import text_frame
from store.events import TERMINAL, Delta, SentenceAttributed, decode_live
from store.log import conv_keys
from store.scripts import range_entries, text

REPLAY_PAGE_ENTRIES = 500

log = logging.getLogger(__name__)


class LiveFrame(msgspec.Struct, frozen=True, gc=False):
    """One stream entry, ready to send: its id, sort key, turn, whether it is a delta, the encoded frame,
    and that frame as WebSocket bytes (built once, written as they are to every socket that shows it).
    Its fields are strings, ints and bytes only, so it is not tracked by the garbage collector (gc=False):
    frames a slow socket's buffer holds are no work for the young collections."""

    id: str
    key: StreamKey
    turn: int
    is_delta: bool
    terminal: bool
    data: bytes
    wire: bytes


def to_frame(entry_id: bytes | str, fields: Fields) -> LiveFrame | None:
    """The server frame for one `:live`/`:log` entry; None (logged) for an entry we cannot decode."""
    eid = text(entry_id)
    raw = fields.get(b"e", fields.get("e"))
    try:
        item = decode_live(raw)  # type: ignore[arg-type]  # None or junk: DecodeError/TypeError
    except (msgspec.DecodeError, TypeError):
        log.error("skipping undecodable stream entry %s", eid)
        return None
    if isinstance(item, Delta):
        data = encode(DeltaFrame(id=eid, text=item.text, turn=item.turn))
        return LiveFrame(eid, id_key(eid), item.turn, True, False, data, text_frame(data))
    raw_bytes = raw if isinstance(raw, bytes) else str(raw).encode()
    data = encode(EventFrame(id=eid, event=msgspec.Raw(raw_bytes)))
    streamed = isinstance(item, SentenceAttributed)  # like a delta: a finished turn's replay skips it
    terminal = isinstance(item, TERMINAL)
    return LiveFrame(eid, id_key(eid), item.turn, streamed, terminal, data, text_frame(data))


async def _last_turn_finished(client: aredis.Redis, conv_id: str) -> int:
    """The highest turn whose terminal event is logged: its deltas need no replay."""
    last: Any = await client.xrevrange(conv_keys(conv_id).log, "+", "-", count=1)
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
    keys = conv_keys(conv_id)
    cursor = after_id or "0-0"
    finished_turn = await _last_turn_finished(client, conv_id)

    def frames(entries: list[tuple[Any, Fields]]) -> list[LiveFrame]:
        decoded = (to_frame(entry_id, fields) for entry_id, fields in entries)
        return [f for f in decoded if f is not None and not (f.is_delta and f.turn <= finished_turn)]

    while True:
        async with client.pipeline(transaction=True) as pipe:
            pipe.xrange(keys.live, f"({cursor}", "+", count=REPLAY_PAGE_ENTRIES)
            pipe.xrange(keys.live, "-", "+", count=1)
            page_raw, head = await pipe.execute()
        page = range_entries(page_raw)
        head_id = text(head[0][0]) if head else None
        if head_id is None or id_key(head_id) > id_key(cursor):
            end = f"({head_id}" if head_id else "+"
            gap: Any = await client.xrange(keys.log, f"({cursor}", end, count=REPLAY_PAGE_ENTRIES)
            if gap:
                cursor = text(gap[-1][0])
                yield frames(gap)
                continue
        if not page:
            return
        cursor = text(page[-1][0])
        yield frames(page)
        if len(page) < REPLAY_PAGE_ENTRIES:
            return
