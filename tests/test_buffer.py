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


class Sink:
    """A direct writer that takes at most `room` items, then nothing until given more room."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.written: list[int] = []

    def __call__(self, items: list[int]) -> int:
        taken = items[: self.room]
        self.room -= len(taken)
        self.written += taken
        return len(taken)


async def test_a_sink_takes_what_it_can_and_the_rest_waits_for_the_consumer_in_order() -> None:
    buffer: BoundedBuffer[int] = BoundedBuffer(capacity=8)
    sink = buffer.sink = Sink(room=3)
    buffer.offer([1, 2])
    buffer.offer([3, 4, 5])
    assert sink.written == [1, 2, 3]
    sink.room = 10
    buffer.offer([6])  # 4 and 5 are queued: 6 must not overtake them
    assert sink.written == [1, 2, 3]
    assert await asyncio.wait_for(buffer.next_batch(), WAIT_S) == [4, 5, 6]
    buffer.offer([7])  # the consumer holds [4, 5, 6] until it asks again
    assert sink.written == [1, 2, 3]
    assert await asyncio.wait_for(buffer.next_batch(), WAIT_S) == [7]
    waiting = asyncio.ensure_future(buffer.next_batch())  # [7] sent: the sink may write again
    await asyncio.sleep(0)
    buffer.offer([8, 9])
    assert sink.written == [1, 2, 3, 8, 9]
    assert not waiting.done()  # written directly: no wake-up
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)


async def test_what_a_sink_cannot_take_still_overflows_the_bounded_buffer() -> None:
    buffer: BoundedBuffer[int] = BoundedBuffer(capacity=2)
    buffer.sink = Sink(room=1)
    buffer.offer([1, 2, 3, 4])
    assert buffer.overflowed
    assert await asyncio.wait_for(buffer.next_batch(), WAIT_S) == []


async def test_a_failing_sink_leaves_the_items_to_the_consumer() -> None:
    def broken(items: list[int]) -> int:
        raise RuntimeError("socket gone")

    buffer: BoundedBuffer[int] = BoundedBuffer(capacity=4)
    buffer.sink = broken
    buffer.offer([1, 2])
    assert await asyncio.wait_for(buffer.next_batch(), WAIT_S) == [1, 2]
