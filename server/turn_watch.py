"""Following one ask's turn on a conversation's live stream, as the chat socket does (server.hub).

    async with TurnWatch.open(services, conv_id, client_message_id) as watch:
        await submit_ask(...)                         # after subscribing: nothing of the turn is missed
        async for item in watch.items(timeout_s):     # Delta | Event of this ask's turn, in order
            ...

The watch subscribes to `conv:{id}:live` on the web process's shared hub before the ask is sent, learns
the ask's turn from the `user_message` carrying its `client_message_id` (an earlier turn still running is
skipped), and ends after the turn's terminal event or an `approval_requested` (the turn then waits for a
reviewer). A subscriber that falls behind (overflow) goes on from the durable log: events only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec

from server.hub import Fields, Subscription
from store.events import TERMINAL, ApprovalRequested, LiveItem, UserMessage, decode_event, decode_live
from store.exceptions import Unavailable
from store.log import conv_keys
from store.scripts import text

if TYPE_CHECKING:
    from server.services import Services

Entry = tuple[str, LiveItem]
LOG_PAGE = 200


def decode_entry(entry_id: str, fields: Fields) -> Entry | None:
    raw = fields.get(b"e", fields.get("e"))
    try:
        return (entry_id, decode_live(raw)) if raw is not None else None
    except msgspec.DecodeError:
        return None


def ends_turn(item: LiveItem) -> bool:
    return isinstance(item, (*TERMINAL, ApprovalRequested))


class TurnWatch:
    def __init__(self, services: Services, conv_id: str, client_message_id: str) -> None:
        self.services = services
        self.conv_id = conv_id
        self.client_message_id = client_message_id
        self.turn: int | None = None
        self.last_id = "0-0"
        self.subscription: Subscription[Entry] | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, services: Services, conv_id: str, client_message_id: str) -> AsyncIterator[TurnWatch]:
        watch = cls(services, conv_id, client_message_id)
        key = conv_keys(conv_id).live
        watch.subscription = await services.hub.subscribe(key, decode_entry, services.settings.ws_send_buffer)
        try:
            yield watch
        finally:
            watch.subscription.close()

    def _mine(self, item: LiveItem) -> bool:
        if isinstance(item, UserMessage) and item.client_message_id == self.client_message_id:
            self.turn = item.turn
        return self.turn is not None and item.turn == self.turn

    async def items(self, timeout_s: float) -> AsyncIterator[LiveItem]:
        """This ask's deltas and events until its turn ends; Unavailable when it does not in time."""
        try:
            async with asyncio.timeout(timeout_s):
                async for item in self._entries():
                    if self._mine(item):
                        yield item
                        if ends_turn(item):
                            return
        except TimeoutError:
            raise Unavailable(f"the turn did not finish within {timeout_s:.0f} s") from None

    async def _entries(self) -> AsyncIterator[LiveItem]:
        assert self.subscription is not None
        while not self.subscription.overflowed:
            for entry_id, item in await self.subscription.next_batch():
                self.last_id = entry_id
                yield item
        async for item in self._from_log():
            yield item

    async def _from_log(self) -> AsyncIterator[LiveItem]:
        """After an overflow: the durable events after the last one seen, polled from the log."""
        while True:
            entries: Any = await self.services.redis.xrange(
                conv_keys(self.conv_id).log, f"({self.last_id}", "+", count=LOG_PAGE
            )
            for entry_id, fields in entries:
                self.last_id = text(entry_id)
                yield decode_event(fields[b"e"])
            if not entries:
                await asyncio.sleep(0.2)
