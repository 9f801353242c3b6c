"""actors.broker against a real Redis: what `AsyncEnqueuer` sends, dramatiq's own consumer receives as if
`RedisBroker.enqueue` had sent it (the web's wake-ups take this path, with no thread hop); the timer
queues' consumers poll less often than the conversation queue's."""

from __future__ import annotations

import time

import dramatiq

from actors.broker import APPROVALS_QUEUE, CONVERSATION_QUEUE, TIMER_QUEUE_POLL_MS, AsyncEnqueuer, make_broker

CONSUME_TIMEOUT_S = 10.0


def received(url: str, queue: str) -> list[dramatiq.Message[object]]:
    """Every message waiting on `queue`, taken with dramatiq's Redis consumer (and acknowledged)."""
    broker = make_broker(url)
    broker.declare_queue(queue)
    consumer = broker.consume(queue, prefetch=10, timeout=100)
    found: list[dramatiq.Message[object]] = []
    deadline = time.monotonic() + CONSUME_TIMEOUT_S
    while time.monotonic() < deadline:
        proxy = next(consumer)
        if proxy is None:
            if found:
                break
            continue
        found.append(proxy._message)
        consumer.ack(proxy)
    consumer.close()
    broker.close()
    return found


async def test_a_message_sent_from_the_event_loop_is_dramatiqs_own(redis_url: str) -> None:
    enqueuer = AsyncEnqueuer(redis_url)
    try:
        sent = [await enqueuer.send("conversation", "advance", (f"c{n}",)) for n in range(3)]
    finally:
        await enqueuer.aclose()

    got = received(redis_url, "conversation")

    expected = [("advance", (f"c{n}",), "conversation") for n in range(3)]
    assert [(m.actor_name, m.args, m.queue_name) for m in got] == expected
    assert [m.message_id for m in got] == [m.message_id for m in sent]
    assert len({m.options["redis_message_id"] for m in got}) == 3  # each its own Redis entry


def test_timer_queues_poll_less_often_when_idle(redis_url: str) -> None:
    broker = make_broker(redis_url)
    queues = (CONVERSATION_QUEUE, f"{CONVERSATION_QUEUE}.DQ", APPROVALS_QUEUE, f"{APPROVALS_QUEUE}.DQ")
    timeouts = [broker.consume(queue, timeout=20).timeout for queue in queues]
    broker.close()

    assert timeouts == [20, 20, TIMER_QUEUE_POLL_MS, TIMER_QUEUE_POLL_MS]
