"""The context a reviewer sees beside an approval: its conversation's last user message, read once."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import msgspec
import redis.asyncio as aredis

from store.events import UserMessage, decode_event
from store.exceptions import InputError
from store.log import conv_keys
from store.redis import REDIS_ERRORS
from store.scripts import payload

CONTEXT_SCAN_ENTRIES = 200
CONTEXT_MAX_CHARS = 2_000
CONTEXT_CACHE_ENTRIES = 4_096

log = logging.getLogger(__name__)


class ContextCache:
    """The last user message of an approval's conversation, read once per approval."""

    def __init__(self, client: aredis.Redis) -> None:
        self.client = client
        self._cache: OrderedDict[str, str] = OrderedDict()

    async def last_user_message(self, approval_id: str, conv_id: str) -> str:
        cached = self._cache.get(approval_id)
        if cached is not None:
            self._cache.move_to_end(approval_id)
            return cached
        try:
            key = conv_keys(conv_id).log
            entries: Any = await self.client.xrevrange(key, "+", "-", count=CONTEXT_SCAN_ENTRIES)
        except (*REDIS_ERRORS, InputError) as exc:  # type: ignore[misc]
            log.warning("no context for approval %s: %s", approval_id, exc)
            return ""
        text = _last_user_text(entries)
        self._cache[approval_id] = text
        while len(self._cache) > CONTEXT_CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return text


def _last_user_text(entries: list[tuple[Any, dict[Any, Any]]]) -> str:
    """The newest UserMessage's text among `entries` (newest first)."""
    for _, fields in entries:
        try:
            event = decode_event(payload(fields))
        except (KeyError, msgspec.DecodeError):
            continue
        if isinstance(event, UserMessage):
            return event.text[:CONTEXT_MAX_CHARS]
    return ""
