"""Whether a conversation has a turn to cancel: one running in the log, or an item waiting in the inbox
for the actor (an ask it has not taken yet, which a cancel right behind it would stop)."""

from __future__ import annotations

from typing import Any

import msgspec
import redis.asyncio as aredis

from server.hub import id_key
from store.events import TERMINAL, decode_event
from store.log import conv_keys
from store.scripts import payload, text


async def turn_running(client: aredis.Redis, conv_id: str) -> bool:
    keys = conv_keys(conv_id)
    async with client.pipeline(transaction=False) as pipe:
        pipe.xrevrange(keys.log, "+", "-", count=1)
        pipe.xrevrange(keys.inbox, "+", "-", count=1)
        pipe.get(keys.inbox_cursor)
        last_logged, last_posted, cursor = await pipe.execute()
    return _waiting(last_posted, cursor) or _unfinished(last_logged)


def _waiting(last_posted: Any, cursor: Any) -> bool:
    return bool(last_posted) and id_key(text(last_posted[0][0])) > id_key(text(cursor) if cursor else "0-0")


def _unfinished(last_logged: Any) -> bool:
    if not last_logged:
        return False
    try:
        return not isinstance(decode_event(payload(last_logged[0][1])), TERMINAL)
    except (KeyError, msgspec.DecodeError):
        return True  # unreadable: let the actor, which owns the log, decide
