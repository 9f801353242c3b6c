"""server.buffer: a socket's bounded buffer wakes its one consumer, batches, and overflows, not grows."""

from __future__ import annotations

import asyncio

from server.buffer import BoundedBuffer

WAIT_S = 5.0


async def test_a_waiting_consumer_is_woken_and_gets_everything_pushed_since() -> None:
    buffer: BoundedBuffer[int] = BoundedBuffer(capacity=8)
    waiting = asyncio.ensure_future(buffer.next_batch())
    await asyncio.sleep(0)
    assert not waiting.done()
    buffer.push(1)
    buffer.push(2)
    assert await asyncio.wait_for(waiting, WAIT_S) == [1, 2]
    buffer.push(3)
    assert await asyncio.wait_for(buffer.next_batch(), WAIT_S) == [3]


async def test_past_its_capacity_the_buffer_drops_its_backlog_and_says_so() -> None:
    buffer: BoundedBuffer[int] = BoundedBuffer(capacity=2)
    for n in range(3):
        buffer.push(n)
    assert buffer.overflowed
    buffer.push(4)  # ignored from now on
    assert await asyncio.wait_for(buffer.next_batch(), WAIT_S) == []


async def test_a_cancelled_wait_leaves_the_buffer_usable() -> None:
    buffer: BoundedBuffer[int] = BoundedBuffer(capacity=4)
    waiting = asyncio.ensure_future(buffer.next_batch())
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    buffer.push(7)
    assert await asyncio.wait_for(buffer.next_batch(), WAIT_S) == [7]
