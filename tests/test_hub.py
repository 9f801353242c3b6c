"""server.hub: a topic delivers each entry above its cursor once, and a key left and followed again resumes
from the stream's tail then, not from what an earlier read had in flight."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis

from server.feed import to_frame
from server.hub import Hub, Subscription, _Topic, hub_client, id_key
from store.events import Delta, encode
from store.redis import sync_client

RECV_TIMEOUT_S = 20.0  # a batch across Redis on a loaded machine


def _echo(entry_id: str, fields: dict[Any, Any]) -> str:
    return entry_id


async def test_a_topic_skips_the_entries_at_or_below_its_cursor_and_moves_it() -> None:
    topic: _Topic[str] = _Topic("k", _echo, asyncio.get_running_loop())
    topic.move_to(b"5-0")
    hub = Hub(hub_client("redis://127.0.0.1:1"))  # never connects: the subscription is not closed here
    subscription: Subscription[str] = Subscription(hub, "k", capacity=16)
    topic.subscribers.add(subscription)
    topic.deliver([(b"4-0", {}), (b"5-0", {}), (b"5-1", {}), (b"12-0", {})])
    topic.deliver([(b"12-0", {}), (b"13-0", {})])  # a read that overlaps the last one
    topic.deliver([(b"9-0", {})])  # all below: nothing, the cursor stays
    assert await subscription.next_batch() == ["5-1", "12-0", "13-0"]
    assert topic.cursor == b"13-0" and topic.floor == id_key("13-0")


def test_an_entry_sort_key_orders_ids_as_redis_does_and_keeps_nothing_tracked() -> None:
    ids = ["0-0", "0-1", "1-0", "1-18446744073709551615", "2-0", "1796237270505-3"]
    keys = [id_key(entry_id) for entry_id in ids]
    assert keys == sorted(set(keys))
    beyond = id_key("1-99999999999999999999")  # a client's 20-digit seq, past Redis's: still before 2-0
    assert id_key("1-18446744073709551615") <= beyond < id_key("2-0")
    frame = to_frame(b"5-1", {b"e": encode(Delta(text="x", turn=1))})
    assert frame is not None and frame.key == id_key("5-1")
    assert not gc.is_tracked(frame.key) and not gc.is_tracked(frame)  # no work for young collections


@pytest.fixture
async def hub(redis_url: str) -> AsyncIterator[Hub]:
    client = hub_client(redis_url)
    hub = Hub(client)
    yield hub
    await hub.aclose()
    closing = asyncio.ensure_future(client.aclose())
    await asyncio.wait({closing}, timeout=RECV_TIMEOUT_S)


@pytest.fixture
def writer(redis_url: str) -> Iterator[redis.Redis]:
    client = sync_client(redis_url)
    yield client
    client.close()


async def test_a_key_followed_again_gets_only_what_is_appended_after(hub: Hub, writer: redis.Redis) -> None:
    key = "conv:{hubtest}:live"
    first = await asyncio.wait_for(hub.subscribe(key, _echo, capacity=64), RECV_TIMEOUT_S)
    one = writer.xadd(key, {"e": "1"}).decode()  # type: ignore[union-attr]
    assert await asyncio.wait_for(first.next_batch(), RECV_TIMEOUT_S) == [one]
    first.close()
    writer.xadd(key, {"e": "2"})  # while nobody follows the key
    again = await asyncio.wait_for(hub.subscribe(key, _echo, capacity=64), RECV_TIMEOUT_S)
    three = writer.xadd(key, {"e": "3"}).decode()  # type: ignore[union-attr]
    four = writer.xadd(key, {"e": "4"}).decode()  # type: ignore[union-attr]
    got: list[str] = []
    while len(got) < 2:
        got += await asyncio.wait_for(again.next_batch(), RECV_TIMEOUT_S)
    assert got == [three, four]
    assert hub.topic_count == 1 and hub.reader_count == 1


def _field(entry_id: str, fields: dict[Any, Any]) -> bytes:
    return bytes(fields[b"e"])


async def test_a_reader_whose_connection_is_killed_reconnects_and_misses_nothing(
    hub: Hub, writer: redis.Redis
) -> None:
    """A shard's own connection, killed under its blocking read: dropped, replaced, and the read resumes
    from the shard's cursor (what was appended meanwhile arrives, once); fields reach `decode` as a dict."""
    key = "conv:{hubkill}:live"
    subscription = await asyncio.wait_for(hub.subscribe(key, _field, capacity=64), RECV_TIMEOUT_S)
    writer.xadd(key, {"e": "1"})
    assert await asyncio.wait_for(subscription.next_batch(), RECV_TIMEOUT_S) == [b"1"]
    await asyncio.sleep(0.1)  # the shard is blocked in its next read
    killed = writer.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    assert int(killed) >= 1
    writer.xadd(key, {"e": "2"})
    writer.xadd(key, {"e": "3"})
    got: list[bytes] = []
    while len(got) < 2:
        got += await asyncio.wait_for(subscription.next_batch(), RECV_TIMEOUT_S)
    assert got == [b"2", b"3"]
