"""The conversation log against a real Redis: fencing, live mirror, snapshots, inbox."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import TypeVar

import msgspec
import pytest
import redis

from store.events import AnswerCompleted, Citation, Delta, Event, LiveItem, TurnStarted, UserMessage
from store.exceptions import InputError, LeaseHeld, StaleEpoch
from store.lease_keeper import LeaseKeeper
from store.log import (
    LIVE_MAXLEN,
    AsyncConversationLog,
    ConversationLog,
    Lease,
    LeaseClosed,
    conv_keys,
)
from store.redis import sync_client
from store.scripts import id_tuple

pytestmark = pytest.mark.cluster  # every test here runs on one Redis and on a Redis Cluster

T = TypeVar("T")
SHORT_TTL_MS = 200
PAST_TTL_S = 0.3
RENEWED_WITHIN_S = 30.0


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = sync_client(redis_url)
    yield client
    client.close()


@pytest.fixture
def log(client: redis.Redis) -> ConversationLog:
    return ConversationLog(client)


def ask(n: int) -> UserMessage:
    return UserMessage(text=f"question {n}", turn=n)


def answer(n: int) -> AnswerCompleted:
    return AnswerCompleted(text=f"answer {n}", turn=n)


def assert_increasing(ids: Sequence[str]) -> None:
    keys = [id_tuple(i) for i in ids]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


# ---- append and read ---------------------------------------------------------------------------------


def test_appends_are_read_back_in_order(log: ConversationLog) -> None:
    lease = log.acquire("c1", "worker-a")
    items: list[Event] = [ask(i) for i in range(2500)]
    ids: list[str] = []
    for start in range(0, len(items), 500):
        ids += log.append(lease, items[start : start + 500])

    entries = log.read("c1")  # more than one page of XRANGE

    assert [e for _, e in entries] == items
    assert [i for i, _ in entries] == ids
    assert_increasing(ids)
    assert log.length("c1") == 2500
    assert log.last_id("c1") == ids[-1]
    assert [e for _, e in log.read("c1", after_id=ids[9], count=3)] == items[10:13]
    assert log.read("empty") == [] and log.last_id("empty") == "0-0"


# ---- the lease and fencing ---------------------------------------------------------------------------


def test_zombie_writer_is_refused_after_takeover(log: ConversationLog, client: redis.Redis) -> None:
    a = log.acquire("c1", "worker-a", ttl_ms=SHORT_TTL_MS)
    log.append(a, [ask(1)])

    time.sleep(PAST_TTL_S)  # A pauses past its TTL without renewing (a GC pause, a stuck call...)
    b = log.acquire("c1", "worker-b", ttl_ms=10_000)
    assert b.epoch == a.epoch + 1
    log.append(b, [TurnStarted(route="qa", turn=1)])
    log_before = log.read("c1")
    live_before = client.xrange(conv_keys("c1").live)

    with pytest.raises(StaleEpoch) as refused:  # A wakes up and writes as if nothing happened
        log.append(a, [answer(1), Delta(text="zombie")])

    assert refused.value.details["reason"] == "stale_epoch"
    assert log.read("c1") == log_before
    assert [e for _, e in log_before] == [ask(1), TurnStarted(route="qa", turn=1)]
    assert client.xrange(conv_keys("c1").live) == live_before
    with pytest.raises(StaleEpoch):
        log.renew(a)
    with pytest.raises(StaleEpoch):
        log.save_snapshot(a, b"zombie state", log_before[-1][0])
    assert log.load_snapshot("c1") is None
    assert log.release(a) is False
    with pytest.raises(LeaseHeld):  # A's release did not free B's lease
        log.acquire("c1", "worker-c")
    log.append(b, [answer(1)])


def test_expired_lease_is_refused_even_without_takeover(log: ConversationLog) -> None:
    lease = log.acquire("c1", "worker-a", ttl_ms=SHORT_TTL_MS)
    time.sleep(PAST_TTL_S)

    with pytest.raises(StaleEpoch) as refused:
        log.append(lease, [ask(1)])
    with pytest.raises(StaleEpoch):
        log.renew(lease)

    assert refused.value.details["reason"] == "lease_expired"
    assert log.length("c1") == 0


def race(attempts: Sequence[Callable[[], T]]) -> list[T | LeaseHeld]:
    """Run each attempt on its own thread, all released at once; a LeaseHeld counts as an outcome."""
    barrier = threading.Barrier(len(attempts))
    outcomes: list[T | LeaseHeld | None] = [None] * len(attempts)

    def run(n: int) -> None:
        barrier.wait()
        try:
            outcomes[n] = attempts[n]()
        except LeaseHeld as exc:
            outcomes[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(attempts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [o for o in outcomes if o is not None]


def test_racing_acquirers_exactly_one_wins(redis_url: str) -> None:
    workers = [ConversationLog.from_url(redis_url) for _ in range(8)]
    for worker in workers:
        worker.length("warm-up")  # connect before the start line

    for round_ in range(5):
        conv_id = f"race-{round_}"
        outcomes = race([partial(w.acquire, conv_id, f"worker-{n}") for n, w in enumerate(workers)])

        won = [o for o in outcomes if isinstance(o, Lease)]
        held = [o for o in outcomes if isinstance(o, LeaseHeld)]
        assert len(won) == 1 and len(held) == len(workers) - 1
        assert won[0].epoch == 1
        assert {exc.details["owner"] for exc in held} == {won[0].owner}
    for worker in workers:
        worker.close()


def test_release_lets_the_next_worker_in_with_a_new_epoch(log: ConversationLog) -> None:
    a = log.acquire("c1", "worker-a")
    with pytest.raises(LeaseHeld) as held:
        log.acquire("c1", "worker-b")
    assert held.value.details["owner"] == "worker-a"
    assert held.value.details["expires_at_ms"] == a.expires_at_ms

    assert log.release(a) is True
    b = log.acquire("c1", "worker-b")

    assert b.epoch == a.epoch + 1
    renewed = log.renew(b, ttl_ms=60_000)
    assert renewed.epoch == b.epoch and renewed.expires_at_ms > b.expires_at_ms


def test_lease_keeper_renews_and_reports_a_lost_lease(log: ConversationLog) -> None:
    # 1.9 s of slack between renewals (it was 220 ms): see the loaded run in the next test.
    lease = log.acquire("c1", "worker-a", ttl_ms=2_000)
    with LeaseKeeper(log, lease, interval_ms=100) as keeper:
        time.sleep(2.1)  # past the first lease's TTL: only renewals keep it
        with pytest.raises(LeaseHeld):
            log.acquire("c1", "worker-b")
        log.append(keeper.lease, [ask(1)])
        assert not keeper.lost.is_set()

    lease = log.acquire("c2", "worker-a", ttl_ms=100)
    with LeaseKeeper(log, lease, interval_ms=250) as keeper:  # renews too late: the lease lapses
        time.sleep(0.15)
        log.acquire("c2", "worker-b")
        assert keeper.lost.wait(timeout=30)


def test_lease_keepers_share_one_renewal_thread_and_stop_renewing_on_exit(
    log: ConversationLog, client: redis.Redis
) -> None:
    LeaseKeeper(log, log.acquire("warm", "worker-a", ttl_ms=300)).__enter__().__exit__()  # the thread
    threads = threading.active_count()
    # 5 s leases renewed every 60 ms, each keeper's first renewal waited for: with 300 ms leases and a
    # 0.6 s sleep, a loaded machine's run (on the cluster) saw a keeper without a renewal.
    leases = [log.acquire(f"k{n}", "worker-a", ttl_ms=5_000) for n in range(5)]
    keepers = [LeaseKeeper(log, lease, interval_ms=60) for lease in leases]
    for keeper in keepers:
        keeper.__enter__()
    assert threading.active_count() == threads  # no thread of its own per keeper
    deadline = time.monotonic() + RENEWED_WITHIN_S
    while any(k.lease.expires_at_ms == lease.expires_at_ms for k, lease in zip(keepers, leases, strict=True)):
        assert time.monotonic() < deadline, "a keeper never renewed"
        time.sleep(0.02)
    for keeper, lease in zip(keepers, leases, strict=True):
        assert keeper.lease.expires_at_ms > lease.expires_at_ms and not keeper.lost.is_set()
        keeper.__exit__()
    expires = [client.hget(conv_keys(k.lease.conv_id).lease, "expires") for k in keepers]
    time.sleep(0.2)  # three intervals: a keeper still scheduled would have renewed by now
    assert [client.hget(conv_keys(k.lease.conv_id).lease, "expires") for k in keepers] == expires


# ---- compare-and-append --------------------------------------------------------------------------------


def test_append_with_a_stale_view_of_the_log_is_refused(log: ConversationLog) -> None:
    lease = log.acquire("c1", "worker-a")
    first = log.append(lease, [ask(1)], expected_last_id="0")
    log.append(lease, [answer(1)], expected_last_id=first[0])

    with pytest.raises(StaleEpoch) as refused:
        log.append(lease, [ask(2)], expected_last_id=first[0])

    assert refused.value.details["reason"] == "log_moved"
    assert [e for _, e in log.read("c1")] == [ask(1), answer(1)]


# ---- the live stream -------------------------------------------------------------------------------------


def test_live_mirrors_the_log_in_order_and_deltas_stay_live(log: ConversationLog) -> None:
    lease = log.acquire("c1", "worker-a")
    turn: list[LiveItem] = [ask(1), TurnStarted(route="qa", turn=1), Delta(text="Hel"), Delta(text="lo")]
    turn.append(answer(1))
    ids = log.append(lease, turn)
    ids += log.append(lease, [Delta(text="late")])
    ids += log.append(lease, [ask(2)])

    live = log.read_live("c1", after_id="0")
    durable = log.read("c1")

    assert [i for i, _ in live] == ids
    assert_increasing(ids)
    assert [(i, e) for i, e in live if not isinstance(e, Delta)] == durable
    assert not any(isinstance(e, Delta) for _, e in durable)
    assert [e.text for _, e in live if isinstance(e, Delta)] == ["Hel", "lo", "late"]


def test_live_is_trimmed_and_catch_up_fills_the_gap_from_the_log(
    log: ConversationLog, client: redis.Redis
) -> None:
    lease = log.acquire("c1", "worker-a")
    opening = log.append(lease, [ask(1), TurnStarted(route="qa", turn=1)])
    for batch in range(30):
        log.append(lease, [Delta(text=f"{batch}.{n} ") for n in range(100)])
    closing = log.append(lease, [answer(1)])

    live_length = client.xlen(conv_keys("c1").live)
    assert LIVE_MAXLEN <= live_length < LIVE_MAXLEN + 200  # approximate trimming: whole nodes
    assert 0 < client.pttl(conv_keys("c1").live) <= log.options.live_ttl_ms

    seen: list[str] = []
    items: list[object] = []
    after = "0"
    while batch_ := log.catch_up("c1", after, count=700):
        seen += [i for i, _ in batch_]
        items += [e for _, e in batch_]
        after = seen[-1]

    assert_increasing(seen)
    assert seen[:2] == opening  # trimmed from live, found in the log
    assert seen[-1] == closing[0]
    assert len(seen) == 2 + live_length
    assert items[-1] == answer(1)


def test_catch_up_resumes_from_a_delta_id(log: ConversationLog) -> None:
    lease = log.acquire("c1", "worker-a")
    ids = log.append(lease, [ask(1), Delta(text="a"), Delta(text="b"), answer(1)])

    assert log.catch_up("c1", ids[1]) == [(ids[2], Delta(text="b")), (ids[3], answer(1))]
    assert log.catch_up("c1", ids[3]) == []


async def test_async_reader_follows_the_live_stream(redis_url: str, log: ConversationLog) -> None:
    reader = AsyncConversationLog.from_url(redis_url)
    lease = log.acquire("c1", "worker-a")
    first = log.append(lease, [ask(1)])

    waiting = asyncio.create_task(reader.read_live("c1", after_id=first[0], block_ms=30_000))  # load
    await asyncio.sleep(0.05)
    ids = await asyncio.to_thread(log.append, lease, [Delta(text="tok"), answer(1)])

    assert await waiting == [(ids[0], Delta(text="tok")), (ids[1], answer(1))]
    assert await reader.read("c1") == log.read("c1")
    assert await reader.last_id("c1") == ids[1] and await reader.length("c1") == 2
    assert await reader.read_live("c1", after_id="$") == []  # nothing new, and no blocking
    await reader.aclose()


# ---- snapshots --------------------------------------------------------------------------------


class Tally(msgspec.Struct):
    """A stand-in for the actors' folded state."""

    events: int = 0
    asked: list[str] = msgspec.field(default_factory=list)
    answered: int = 0


def fold(state: Tally, events: Sequence[Event]) -> Tally:
    for event in events:
        state.events += 1
        match event:
            case UserMessage(text=text):
                state.asked.append(text)
            case AnswerCompleted():
                state.answered += 1
    return state


def test_snapshot_plus_tail_equals_the_full_fold(log: ConversationLog) -> None:
    lease = log.acquire("c1", "worker-a")
    ids = log.append(lease, [item for n in range(60) for item in (ask(n), answer(n))])
    events = [e for _, e in log.read("c1")]
    log.save_snapshot(lease, msgspec.msgpack.encode(fold(Tally(), events[:80])), ids[79])

    snapshot, tail = log.read_from_snapshot("c1")

    assert snapshot is not None and snapshot.last_event_id == ids[79] and snapshot.epoch == lease.epoch
    assert [i for i, _ in tail] == ids[80:]
    resumed = fold(msgspec.msgpack.decode(snapshot.state, type=Tally), [e for _, e in tail])
    assert resumed == fold(Tally(), events)

    log.save_snapshot(lease, msgspec.msgpack.encode(resumed), ids[-1])
    assert log.read_from_snapshot("c1")[1] == []


def test_bad_snapshots_are_refused_and_change_nothing(log: ConversationLog) -> None:
    lease = log.acquire("c1", "worker-a")
    ids = log.append(lease, [ask(1), answer(1)])
    log.save_snapshot(lease, b"at the end", ids[1])

    with pytest.raises(InputError):
        log.save_snapshot(lease, b"backwards", ids[0])
    with pytest.raises(InputError):
        log.save_snapshot(lease, b"no such event", "1-0")
    with pytest.raises(InputError):
        log.save_snapshot(lease, "not bytes", ids[1])  # type: ignore[arg-type]

    snapshot = log.load_snapshot("c1")
    assert snapshot is not None and snapshot.state == b"at the end"


def test_closing_a_lease_saves_the_snapshot_releases_and_reports_a_newer_inbox_entry(
    log: ConversationLog,
) -> None:
    seen = log.post_inbox("c1", ask(0)).inbox_id
    lease = log.acquire("c1", "worker-a")
    ids = log.append(lease, [ask(1), answer(1)], inbox_cursor=seen)
    closed = log.close_lease(lease, snapshot=(b"state", ids[1]), inbox_seen=seen)
    assert closed == LeaseClosed(released=True, newer_inbox=False)
    snapshot = log.load_snapshot("c1")
    assert snapshot is not None and (snapshot.state, snapshot.last_event_id) == (b"state", ids[1])
    other = log.acquire("c1", "worker-b", ttl_ms=5_000)  # released: another owner gets in at once
    assert log.release(other)

    log.post_inbox("c1", ask(2))
    lease = log.acquire("c1", "worker-a")
    assert log.close_lease(lease, inbox_seen=seen).newer_inbox
    assert log.close_lease(lease) == LeaseClosed(released=True, newer_inbox=False)  # nothing seen: no compare


def test_a_refused_closing_snapshot_releases_nothing(log: ConversationLog) -> None:
    lease = log.acquire("c1", "worker-a")
    ids = log.append(lease, [ask(1), answer(1)])
    with pytest.raises(InputError):
        log.close_lease(lease, snapshot=(b"no such event", "1-0"))
    with pytest.raises(LeaseHeld):
        log.acquire("c1", "worker-b")  # the refused close released nothing
    newer = log.acquire("c1", "worker-a")  # the same owner again: a new epoch fences the old handle
    with pytest.raises(StaleEpoch):
        log.close_lease(lease, snapshot=(b"zombie", ids[1]))
    assert log.load_snapshot("c1") is None
    assert log.close_lease(newer).released


# ---- the inbox --------------------------------------------------------------------------------


def test_inbox_posts_once_per_client_id(log: ConversationLog) -> None:
    first = log.post_inbox("c1", ask(1), client_id="msg-1")
    again = log.post_inbox("c1", ask(1), client_id="msg-1")
    other = log.post_inbox("c1", ask(2), client_id="msg-2")
    anonymous = [log.post_inbox("c1", ask(3)) for _ in range(2)]

    assert not first.duplicate and again.duplicate and again.inbox_id == first.inbox_id
    assert not other.duplicate and not any(p.duplicate for p in anonymous)
    assert log.inbox_length("c1") == 4
    assert log.length("c1") == 0  # the web process never writes the log


def test_inbox_survives_a_crash_between_take_and_append_without_loss_or_double(log: ConversationLog) -> None:
    posted = [log.post_inbox("c1", ask(n), client_id=f"msg-{n}").inbox_id for n in range(3)]

    a = log.acquire("c1", "worker-a", ttl_ms=SHORT_TTL_MS)
    taken = log.take_inbox(a)
    assert [i for i, _ in taken] == posted
    log.append(a, [taken[0][1]], inbox_cursor=taken[0][0])
    # ... worker A dies here, after moving one item and before moving the other two.
    time.sleep(PAST_TTL_S)

    b = log.acquire("c1", "worker-b")
    retaken = log.take_inbox(b)
    assert [i for i, _ in retaken] == posted[1:]  # nothing lost, the first one not offered again
    with pytest.raises(StaleEpoch):  # A, resurrected, cannot move an item (or the cursor) behind B's back
        log.append(a, [retaken[0][1]], inbox_cursor=retaken[0][0])
    assert log.inbox_cursor("c1") == posted[0]
    for inbox_id, item in retaken:
        log.append(b, [item], inbox_cursor=inbox_id)

    assert log.take_inbox(b) == []
    assert [e for _, e in log.read("c1")] == [ask(0), ask(1), ask(2)]
    assert log.inbox_cursor("c1") == posted[2]
    assert log.inbox_length("c1") == 0  # consumed entries are trimmed with the append
    assert log.release(b)
    assert log.take_inbox(log.acquire("c1", "worker-c")) == []


def test_the_inbox_cursor_can_be_advanced_without_appending(log: ConversationLog) -> None:
    inbox_id = log.post_inbox("c1", ask(1)).inbox_id
    lease = log.acquire("c1", "worker-a")

    assert log.append(lease, [], inbox_cursor=inbox_id) == []  # e.g. an item the actor chose to drop

    assert log.take_inbox(lease) == [] and log.length("c1") == 0


# ---- bad input -----------------------------------------------------------------------------------------


def test_bad_input_gets_a_typed_error_and_changes_nothing(log: ConversationLog, client: redis.Redis) -> None:
    lease = log.acquire("c1", "worker-a")
    log.append(lease, [ask(1)])
    keys_before = sorted(client.keys("*"))
    entries_before = log.read("c1")

    bad_calls = [
        lambda: log.acquire("c{1}", "worker-a"),
        lambda: log.acquire("c 1", "worker-a"),
        lambda: log.acquire("c2", ""),
        lambda: log.acquire("c2", "worker-a", ttl_ms=0),
        lambda: log.read("c1", after_id="yesterday"),
        lambda: log.read("c1", count=0),
        lambda: log.read_live("c1", after_id="0", block_ms=-1),
        lambda: log.append(lease, [ask(2), Citation(n=1, chunk_id="x", doc_id="y")]),  # type: ignore[list-item]
        lambda: log.append(lease, [ask(2)], expected_last_id="last"),
        lambda: log.append(lease, [ask(2)], inbox_cursor="99999999999999-0"),  # never posted
        lambda: log.post_inbox("c1", Delta(text="x")),  # type: ignore[arg-type]
        lambda: log.post_inbox("c1", ask(2), client_id="has space"),
    ]
    for call in bad_calls:
        with pytest.raises(InputError):
            call()

    assert sorted(client.keys("*")) == keys_before
    assert log.read("c1") == entries_before
