"""Reviewer rooms on the shared hub: each room stream `room:{tenant}:{room}:events` is one hub key (read by
the same bounded reader pool as the chat streams), decoded once per entry; the `item` frame a reviewer
gets is rendered once per entry too (it reads the approval's context), then reused for every socket."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import msgspec

from server.hub import Fields, Subscription
from server.protocol import Item, encode
from server.review.service import Reviews, reviews
from store.approvals import RoomEvent, room_events_key
from store.scripts import payload

RENDERED_CACHE_ENTRIES = 1_024

log = logging.getLogger(__name__)

_room_event = msgspec.json.Decoder(RoomEvent)


class RoomEntry(msgspec.Struct, frozen=True):
    id: str  # the room stream entry id
    event: RoomEvent


def room_entry(entry_id: str, fields: Fields) -> RoomEntry | None:
    try:
        return RoomEntry(entry_id, _room_event.decode(payload(fields)))
    except (KeyError, msgspec.DecodeError):
        log.error("skipping undecodable room entry %s", entry_id)
        return None


class RoomFeed:
    """The process's room subscriptions and rendered items."""

    def __init__(self, reviews: Reviews) -> None:
        self.reviews = reviews
        self._rendered: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()

    async def follow(self, tenant: str, room: str, capacity: int) -> Subscription[RoomEntry]:
        hub = self.reviews.services.hub
        return await hub.subscribe(room_events_key(tenant, room), room_entry, capacity)

    async def item(self, entry: RoomEntry) -> bytes:
        record = entry.event.record
        key = (record.tenant, record.room, entry.id)
        data = self._rendered.get(key)
        if data is None:
            view = await self.reviews.view(record)
            data = self._rendered[key] = encode(Item(room=record.room, id=entry.id, kind=entry.event.kind,
                                                     approval=view))  # fmt: skip
            while len(self._rendered) > RENDERED_CACHE_ENTRIES:
                self._rendered.popitem(last=False)
        return data


def room_feed(app: Any) -> RoomFeed:
    feed: RoomFeed | None = getattr(app.state, "room_feed", None)
    if feed is None:
        feed = app.state.room_feed = RoomFeed(reviews(app))
    return feed
