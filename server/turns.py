"""Whether a conversation has a turn to cancel: one running in the log, or an item waiting in the inbox
for the actor (an ask it has not taken yet, which a cancel right behind it would stop)."""

from __future__ import annotations

from typing import Any

import msgspec
import redis.asyncio as aredis

from server.hub import id_key
from store.events import TERMINAL, Feedback, decode_event
from store.log import conv_keys
from store.scripts import payload, text

RECENT_EVENTS = 16  # past this many ratings in a row, the actor decides (a cancel it then drops)


async def turn_running(client: aredis.Redis, conv_id: str) -> bool:
    keys = conv_keys(conv_id)
    async with client.pipeline(transaction=False) as pipe:
        pipe.xrevrange(keys.log, "+", "-", count=RECENT_EVENTS)
        pipe.xrevrange(keys.inbox, "+", "-", count=1)
        pipe.get(keys.inbox_cursor)
        last_logged, last_posted, cursor = await pipe.execute()
    return _waiting(last_posted, cursor) or _unfinished(last_logged)


def _waiting(last_posted: Any, cursor: Any) -> bool:
    return bool(last_posted) and id_key(text(last_posted[0][0])) > id_key(text(cursor) if cursor else "0-0")


def _unfinished(recent: Any) -> bool:
    """The newest event that is not a rating (a rating reopens no turn) is not terminal."""
    if not recent:
        return False
    try:
        for _, fields in recent:
            event = decode_event(payload(fields))
            if not isinstance(event, Feedback):
                return not isinstance(event, TERMINAL)
    except (KeyError, msgspec.DecodeError):
        pass  # unreadable: let the actor, which owns the log, decide
    return True
