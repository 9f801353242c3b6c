"""The approvals ledger against a real Redis: create, compare-and-set decisions, expiry, audit, rooms."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Iterator

import msgspec
import pytest
import redis

from store.approvals import (
    DECIDE,
    AlreadyDecided,
    ApprovalLedger,
    ApprovalRecord,
    AsyncApprovalLedger,
    Decided,
    NotDue,
    approval_key,
)
from store.events import Decision
from store.exceptions import InputError
from store.redis import sync_client
from store.scripts import Eval, Plan, SyncRunner

pytestmark = pytest.mark.cluster  # every test here runs on one Redis and on a Redis Cluster

T0_MS = 1_700_000_000_000
DAY_MS = 24 * 3600 * 1000


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = sync_client(redis_url)
    yield client
    client.close()


@pytest.fixture
def ledger(client: redis.Redis) -> ApprovalLedger:
    return ApprovalLedger(client)


def request(
    approval_id: str = "ap-1",
    *,
    tenant: str = "acme",
    room: str = "legal",
    tool: str = "send_email",
    created_ms: int = T0_MS,
    args: str = '{"to": "ceo@acme.test", "subject": "Q3"}',
) -> ApprovalRecord:
    return ApprovalRecord(
        approval_id=approval_id,
        conv_id="c1",
        tenant=tenant,
        room=room,
        tool=tool,
        args=args,
        args_hash=hashlib.sha256(args.encode()).hexdigest(),
        requested_by="alice",
        reason="the user asked to email the table",
        created_ms=created_ms,
        expires_ms=created_ms + 3 * DAY_MS,
    )


def room_kinds(ledger: ApprovalLedger, tenant: str = "acme", room: str = "legal") -> list[tuple[str, str]]:
    return [(e.kind, e.record.approval_id) for _, e in ledger.read_room(tenant, room)]


def test_create_queues_the_approval_and_announces_it_once(ledger: ApprovalLedger) -> None:
    record = request()

    assert ledger.create(record) == record
    assert ledger.create(record) == record  # a replayed create is a no-op

    assert ledger.get("ap-1") == record
    assert ledger.list_pending("acme", "legal") == [record]
    assert room_kinds(ledger) == [("requested", "ap-1")]
    with pytest.raises(InputError):
        ledger.create(request(args='{"to": "someone-else@acme.test"}'))  # same id, other arguments
    assert ledger.get("ap-1") == record


Reviewer = tuple[ApprovalLedger, str, Decision]


def decide_at_once(reviewers: list[Reviewer], approval_id: str) -> dict[str, object]:
    """Each reviewer decides `approval_id` on its own thread, all released at once."""
    barrier = threading.Barrier(len(reviewers))
    outcomes: dict[str, object] = {}

    def review(own: ApprovalLedger, reviewer: str, decision: Decision) -> None:
        barrier.wait()
        outcomes[reviewer] = own.decide(approval_id, decision, reviewer, "looked at it", T0_MS + DAY_MS)

    threads = [threading.Thread(target=review, args=r) for r in reviewers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_two_reviewers_deciding_at_once_exactly_one_wins(redis_url: str, ledger: ApprovalLedger) -> None:
    approvals = [f"ap-{n}" for n in range(10)]
    for n, approval_id in enumerate(approvals):
        ledger.create(request(approval_id, created_ms=T0_MS + n))
    bob, carol = ApprovalLedger.from_url(redis_url), ApprovalLedger.from_url(redis_url)
    for reviewer in (bob, carol):
        reviewer.get("warm-up")  # connect before the start line

    for approval_id in approvals:
        outcomes = decide_at_once([(bob, "bob", "approved"), (carol, "carol", "denied")], approval_id)

        winners = [r for r, o in outcomes.items() if isinstance(o, Decided)]
        assert len(winners) == 1
        winner = winners[0]
        loser = next(o for r, o in outcomes.items() if r != winner)
        assert isinstance(loser, AlreadyDecided)
        stored = ledger.get(approval_id)
        assert stored is not None
        assert (loser.by, loser.decision, loser.at_ms) == (winner, stored.state, T0_MS + DAY_MS)
        assert stored.reviewer == winner and stored.decision_reason == "looked at it"

    assert ledger.list_pending("acme", "legal") == []
    assert len(ledger.list_decisions("acme")) == 10
    expected = [("requested", a) for a in approvals] + [("decided", a) for a in approvals]
    assert sorted(room_kinds(ledger)) == sorted(expected)
    bob.close()
    carol.close()


def test_expiry_is_a_compare_and_set_too(ledger: ApprovalLedger) -> None:
    record = ledger.create(request())
    expires = record.expires_ms

    assert ledger.expire("ap-1", expires - 1) == NotDue(expires_ms=expires)
    expired = ledger.expire("ap-1", expires)
    assert isinstance(expired, Decided) and expired.record.state == "expired"
    assert expired.record.decided_ms == expires

    late = ledger.decide("ap-1", "approved", "bob", "sorry, was on leave", expires + 5)
    assert isinstance(late, AlreadyDecided)
    assert (late.by, late.decision, late.at_ms) == ("", "expired", expires)
    assert isinstance(ledger.expire("ap-1", expires + 10), AlreadyDecided)
    assert ledger.list_pending("acme", "legal") == []
    assert room_kinds(ledger) == [("requested", "ap-1"), ("expired", "ap-1")]


def test_a_decision_after_the_deadline_expires_the_approval(ledger: ApprovalLedger) -> None:
    record = ledger.create(request())

    late = ledger.decide("ap-1", "approved", "bob", "", record.expires_ms)

    assert isinstance(late, AlreadyDecided) and late.decision == "expired"
    assert [r.state for r in ledger.list_decisions("acme")] == ["expired"]


def test_audit_listing_filters_by_tool_time_and_state(ledger: ApprovalLedger) -> None:
    plan = [
        ("ap-1", "send_email", "approved", 1),
        ("ap-2", "delete_document", "denied", 2),
        ("ap-3", "send_email", "denied", 3),
        ("ap-4", "send_email", "approved", 4),
    ]
    for approval_id, tool, decision, hour in plan:
        ledger.create(request(approval_id, tool=tool))
        ledger.decide(approval_id, decision, "bob", "", T0_MS + hour * 3600_000)  # type: ignore[arg-type]
    ledger.create(request("other-tenant", tenant="globex"))
    ledger.decide("other-tenant", "approved", "mallory", "", T0_MS + 3600_000)

    def ids(records: list[ApprovalRecord]) -> list[str]:
        return [r.approval_id for r in records]

    assert ids(ledger.list_decisions("acme")) == ["ap-4", "ap-3", "ap-2", "ap-1"]
    assert ids(ledger.list_decisions("acme", tool="send_email")) == ["ap-4", "ap-3", "ap-1"]
    window = ledger.list_decisions("acme", since_ms=T0_MS + 2 * 3600_000, until_ms=T0_MS + 3 * 3600_000)
    assert ids(window) == ["ap-3", "ap-2"]
    assert ids(ledger.list_decisions("acme", state="denied")) == ["ap-3", "ap-2"]
    assert ids(ledger.list_decisions("acme", limit=2)) == ["ap-4", "ap-3"]
    assert ids(ledger.list_decisions("globex")) == ["other-tenant"]


def test_another_tenants_reviewer_cannot_see_or_decide(ledger: ApprovalLedger) -> None:
    ledger.create(request())

    with pytest.raises(InputError):
        ledger.decide("ap-1", "approved", "mallory", "", T0_MS, tenant="globex")

    assert ledger.decide("ap-1", "denied", "bob", "", T0_MS, tenant="acme").ok
    assert ledger.list_pending("globex", "legal") == []


def test_a_crash_between_decide_and_settle_is_repaired_by_the_next_listing(
    ledger: ApprovalLedger, client: redis.Redis
) -> None:
    ledger.create(request())

    def compare_and_set_only() -> Plan[object]:
        return (yield Eval(DECIDE, [approval_key("ap-1")], ["decide", "approved", "bob", "", T0_MS, ""]))

    SyncRunner(client).run(compare_and_set_only())  # the process dies before settling
    assert client.zcard("room:{acme}:{legal}:pending") == 1

    assert ledger.list_pending("acme", "legal") == []
    assert [r.approval_id for r in ledger.list_decisions("acme")] == ["ap-1"]
    assert ledger.list_pending("acme", "legal") == []
    assert room_kinds(ledger) == [("requested", "ap-1"), ("decided", "ap-1")]


def test_bad_input_gets_a_typed_error_and_changes_nothing(
    ledger: ApprovalLedger, client: redis.Redis
) -> None:
    ledger.create(request())
    before = {key: client.dump(key) for key in client.keys("*")}

    bad_calls = [
        lambda: ledger.create(request("ap-2", tenant="ac{me}")),
        lambda: ledger.create(request("ap-2", args="not json")),
        lambda: ledger.create(msgspec.structs.replace(request("ap-2"), expires_ms=T0_MS)),
        lambda: ledger.create(msgspec.structs.replace(request("ap-2"), state="approved")),
        lambda: ledger.decide("ap-1", "maybe", "bob"),  # type: ignore[arg-type]
        lambda: ledger.decide("ap-1", "approved", ""),
        lambda: ledger.decide("ap-1", "approved", "bob", "x" * 5000),
        lambda: ledger.decide("no-such-approval", "approved", "bob"),
        lambda: ledger.list_pending("acme", "legal", limit=0),
        lambda: ledger.read_room("acme", "legal", after_id="latest"),
    ]
    for call in bad_calls:
        with pytest.raises(InputError):
            call()

    assert {key: client.dump(key) for key in client.keys("*")} == before


async def test_a_reviewer_console_follows_the_room_and_decides(
    redis_url: str, ledger: ApprovalLedger
) -> None:
    console = AsyncApprovalLedger.from_url(redis_url)
    ledger.create(request())
    ((last_seen, _),) = await console.read_room("acme", "legal")

    waiting = asyncio.create_task(console.read_room("acme", "legal", after_id=last_seen, block_ms=30_000))
    await asyncio.sleep(0.05)  # it may block first or not: it reads after last_seen either way
    outcome = await console.decide("ap-1", "approved", "bob", "fine", T0_MS + 1, tenant="acme")

    assert isinstance(outcome, Decided) and outcome.record.state == "approved"
    ((_, event),) = await waiting
    assert event.kind == "decided" and event.record == outcome.record
    assert await console.list_pending("acme", "legal") == []
    assert await console.list_decisions("acme") == [outcome.record]
    await console.aclose()
