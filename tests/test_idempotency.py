"""The idempotency ledger for tool side effects, against a real Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from store.exceptions import InputError
from store.idempotency import AsyncIdempotencyLedger, IdempotencyEntry, IdempotencyLedger

pytestmark = pytest.mark.cluster  # every test here runs on one Redis and on a Redis Cluster


@pytest.fixture
def ledger(redis_url: str) -> Iterator[IdempotencyLedger]:
    ledger = IdempotencyLedger.from_url(redis_url)
    yield ledger
    ledger.close()


def test_claim_act_record_then_replay_gets_the_result(ledger: IdempotencyLedger) -> None:
    assert ledger.get("k1") is None
    assert ledger.claim("k1", owner="worker-a")
    assert not ledger.claim("k1", owner="worker-b")
    assert ledger.get("k1") == IdempotencyEntry(state="claimed", owner="worker-a")

    ledger.record("k1", b'{"message_id": "<1@smtp>"}')

    assert ledger.get("k1") == IdempotencyEntry(state="done", result=b'{"message_id": "<1@smtp>"}')
    assert not ledger.claim("k1", owner="worker-b")
    assert not ledger.release("k1", owner="worker-a")  # a recorded result is never dropped


def test_a_failed_claim_is_released_only_by_its_owner(ledger: IdempotencyLedger) -> None:
    assert ledger.claim("k1", owner="worker-a")
    assert not ledger.release("k1", owner="worker-b")
    assert ledger.release("k1", owner="worker-a")
    assert ledger.claim("k1", owner="worker-b")


def test_an_abandoned_claim_expires(ledger: IdempotencyLedger) -> None:
    assert ledger.claim("k1", ttl_ms=100, owner="crashed")
    time.sleep(0.2)
    assert ledger.claim("k1", owner="worker-b")


def test_racing_claims_exactly_one_wins(redis_url: str) -> None:
    barrier, won = threading.Barrier(8), []

    def claim(n: int) -> None:
        own = IdempotencyLedger.from_url(redis_url)
        own.get("k1")
        barrier.wait()
        if own.claim("k1", owner=f"worker-{n}"):
            won.append(n)
        own.close()

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1


def test_bad_input_gets_a_typed_error(ledger: IdempotencyLedger) -> None:
    with pytest.raises(InputError):
        ledger.claim("has space")
    with pytest.raises(InputError):
        ledger.claim("k1", ttl_ms=0)
    with pytest.raises(InputError):
        ledger.record("k1", "not bytes")  # type: ignore[arg-type]
    assert ledger.get("k1") is None


async def test_the_async_ledger_sees_the_same_entries(redis_url: str, ledger: IdempotencyLedger) -> None:
    other = AsyncIdempotencyLedger.from_url(redis_url)
    assert await other.claim("k1", owner="web")
    assert not ledger.claim("k1")
    await other.record("k1", b"done")
    assert ledger.get("k1") == IdempotencyEntry(state="done", result=b"done")
    await other.aclose()
