"""Approval timers and decision delivery: how a human's answer (or the clock's) reaches a conversation.

The conversation actor records a pending `ApprovalRecord` (store.approvals), appends `ApprovalRequested`
to its log, calls `schedule_expiry` and ends its message: nothing waits. From then on:

- a reviewer decides in the web process: `decide` = the ledger's compare-and-set, then `ApprovalDecided`
  goes to the conversation's inbox and an `advance` message wakes the actor (the loser of a race gets
  `AlreadyDecided`, naming who won);
- `remind_approval` (queue `approvals`, delayed until `approval_reminder_s` before expiry) announces a
  still-pending approval to its room again, once;
- `expire_approval` (queue `approvals`, delayed until the expiry) expires a still-pending approval
  (expired = denied), posts `ApprovalExpired` to the inbox and wakes the actor. When it finds the
  approval already decided it checks that the decision reached the conversation and re-delivers it when
  a crash lost it, so every approval's outcome reaches its conversation at least by its expiry.

Every inbox post of an approval's outcome carries the dedup id `approval:<id>` (store.log's inbox dedup,
which the web process's dispatcher uses too), so it enters the inbox once; the actor still folds at most
one outcome per approval id.

Timers are plain dramatiq messages sent by actor name (`actors.broker.enqueue_by_name`), so the web
process never needs the actor objects. A delay longer than `MAX_TIMER_HOP_MS` is covered in hops (the
message re-enqueues itself until due), so no message sits for days in a worker's prefetched delay queue.
"Now" for the timers is the wall clock plus `settings.approval_clock_offset_ms` (a test moves time
forward with it).

Workers declare the actors by importing this module after `actors.broker.setup_broker()` (the
`actors.worker` module does), or by calling `declare(broker)`. `python -m actors.approvals` runs a worker
for the `approvals` queue alone.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import dramatiq
import msgspec

from actors.api import Dispatcher
from actors.broker import (
    ADVANCE_ACTOR,
    APPROVALS_QUEUE,
    CONVERSATION_QUEUE,
    enqueue_by_name,
    process_broker,
    setup_broker,
)
from store.approvals import (
    ROOM_EVENTS_MAXLEN,
    AlreadyDecided,
    ApprovalLedger,
    ApprovalRecord,
    AsyncApprovalLedger,
    Decided,
    NotDue,
    RoomEvent,
    reminded_key,
    room_events_key,
)
from store.clock import now_ms
from store.events import ApprovalDecided, ApprovalExpired, Decision, decode_event
from store.exceptions import DocentError, InputError
from store.log import ConversationLog, conv_keys
from store.redis import sync_client
from store.retry import RetryPolicy
from store.scripts import payload
from store.settings import Settings, get_settings

EXPIRE_ACTOR = "expire_approval"
REMIND_ACTOR = "remind_approval"
MAX_TIMER_HOP_MS = 3600 * 1000
REMINDED_MARK_TTL_S = 30 * 24 * 3600
OUTCOME_SCAN_ENTRIES = 2_000
TIMER_RETRY = RetryPolicy(max_retries=10, first_s=15.0, max_s=7 * 24 * 3600.0)  # dramatiq's default backoff
TIMER_TIME_LIMIT_MS = 60_000

log = logging.getLogger(__name__)
_room_event_encoder = msgspec.json.Encoder()


# ---- clock, ids, outcomes -------------------------------------------------------------------------


def clock_ms(settings: Settings) -> int:
    """The timers' "now": the wall clock shifted by `approval_clock_offset_ms` (0 outside tests)."""
    return now_ms() + settings.approval_clock_offset_ms


def inbox_client_id(approval_id: str) -> str:
    """The inbox dedup id of an approval's outcome, whoever posts it (reviewer, timer, repair)."""
    return f"approval:{approval_id}"


def outcome_event(record: ApprovalRecord) -> ApprovalDecided | ApprovalExpired | None:
    """The inbox item that tells the conversation how `record` ended; None while it is pending."""
    match record.state:
        case "approved" | "denied":
            return ApprovalDecided(
                approval_id=record.approval_id,
                decision=record.state,
                reviewer=record.reviewer,
                reason=record.decision_reason,
                at_ms=record.decided_ms,
            )
        case "expired":
            return ApprovalExpired(approval_id=record.approval_id, at_ms=record.decided_ms)
        case _:
            return None


# ---- the web side: deciding -----------------------------------------------------------------------


async def decide(
    ledger: AsyncApprovalLedger,
    dispatcher: Dispatcher,
    approval_id: str,
    decision: Decision,
    reviewer: str,
    reason: str = "",
    *,
    tenant: str,
    now_ms: int | None = None,
) -> Decided | AlreadyDecided:
    """Decide once (compare-and-set), then hand the decision to the conversation and wake it.

    The loser of a race gets `AlreadyDecided` (who, what, when). A decision is (re)delivered on every
    call that finds it approved or denied: the dispatcher's dedup id makes that a no-op when the first
    delivery got through, and a repair when the deciding process died before delivering."""
    result = await ledger.decide(approval_id, decision, reviewer, reason, now_ms, tenant=tenant)
    item = outcome_event(result.record)
    if isinstance(item, ApprovalDecided):
        await dispatcher.submit(result.record.conv_id, item, dedup_id=inbox_client_id(approval_id))
    return result


# ---- the worker side: timers ------------------------------------------------------------------------


class _Stores:
    """Blocking Redis clients for one URL, shared by a worker's threads (redis-py pools are thread-safe)."""

    def __init__(self, url: str) -> None:
        self.client = sync_client(url)
        self.ledger = ApprovalLedger(self.client)
        self.log = ConversationLog(self.client)


_stores: dict[str, _Stores] = {}
_stores_lock = threading.Lock()


def _stores_for(settings: Settings) -> _Stores:
    with _stores_lock:
        stores = _stores.get(settings.redis_url)
        if stores is None:
            stores = _stores[settings.redis_url] = _Stores(settings.redis_url)
        return stores


def _timer(broker: dramatiq.Broker, actor_name: str, args: tuple[Any, ...], due_ms: int, now: int) -> None:
    """Enqueue a timer message due at `due_ms` (clock_ms time), at most MAX_TIMER_HOP_MS ahead."""
    delay = min(max(due_ms - now, 0), MAX_TIMER_HOP_MS)
    enqueue_by_name(broker, APPROVALS_QUEUE, actor_name, args, delay_ms=delay)


def wake(broker: dramatiq.Broker, conv_id: str) -> None:
    """Send the conversation actor an `advance(conv_id)` message."""
    enqueue_by_name(broker, CONVERSATION_QUEUE, ADVANCE_ACTOR, (conv_id,))


def schedule_expiry(
    approval_id: str,
    conv_id: str,
    expires_at_ms: int,
    *,
    settings: Settings | None = None,
    broker: dramatiq.Broker | None = None,
) -> None:
    """Enqueue the approval's reminder (when `approval_reminder_s` before expiry is still ahead) and its
    expiry. Safe to repeat: a duplicate timer finds the approval settled (or reminded) and does nothing."""
    settings = settings or get_settings()
    broker = broker or setup_broker(settings)
    now = clock_ms(settings)
    if settings.approval_reminder_s:
        remind_at_ms = expires_at_ms - settings.approval_reminder_s * 1000
        if remind_at_ms > now:
            _timer(broker, REMIND_ACTOR, (approval_id, conv_id, remind_at_ms), remind_at_ms, now)
    _timer(broker, EXPIRE_ACTOR, (approval_id, conv_id, expires_at_ms), expires_at_ms, now)


def _outcome_logged(stores: _Stores, conv_id: str, approval_id: str) -> bool:
    """Whether the conversation's inbox or log already holds an outcome for this approval."""
    keys = conv_keys(conv_id)
    for key in (keys.inbox, keys.log):
        entries: Any = stores.client.xrevrange(key, "+", "-", count=OUTCOME_SCAN_ENTRIES)
        for _, fields in entries:
            try:
                event = decode_event(payload(fields))
            except (KeyError, msgspec.DecodeError):  # a bad entry is the actor's to report
                continue
            if isinstance(event, ApprovalDecided | ApprovalExpired) and event.approval_id == approval_id:
                return True
    return False


def deliver(
    record: ApprovalRecord, *, settings: Settings | None = None, broker: dramatiq.Broker | None = None
) -> bool:
    """Post the outcome of a settled approval to its conversation's inbox (once) and wake the actor.
    Returns whether the post was new."""
    settings = settings or get_settings()
    item = outcome_event(record)
    if item is None:
        return False
    posted = _stores_for(settings).log.post_inbox(record.conv_id, item, inbox_client_id(record.approval_id))
    wake(broker or setup_broker(settings), record.conv_id)
    return not posted.duplicate


def expire_approval(approval_id: str, conv_id: str, due_ms: int) -> None:
    """Timer: expire the approval if it is still pending at its expiry, and tell the conversation."""
    settings = get_settings()
    broker = setup_broker(settings)
    now = clock_ms(settings)
    if now < due_ms:
        _timer(broker, EXPIRE_ACTOR, (approval_id, conv_id, due_ms), due_ms, now)
        return
    stores = _stores_for(settings)
    try:
        result = stores.ledger.expire(approval_id, now_ms=now)
    except InputError:
        log.warning("expiry timer for unknown approval %s (conversation %s): dropped", approval_id, conv_id)
        return
    match result:
        case NotDue(expires_ms=expires_ms):  # the record's expiry is later than the timer thought
            _timer(broker, EXPIRE_ACTOR, (approval_id, conv_id, expires_ms), expires_ms, now)
        case Decided(record=record):
            deliver(record, settings=settings, broker=broker)
            log.info("approval %s expired (conversation %s)", approval_id, conv_id)
        case AlreadyDecided(record=record):
            if not _outcome_logged(stores, record.conv_id, approval_id):
                log.warning("approval %s was %s but its conversation never heard: re-delivering",
                            approval_id, record.state)  # fmt: skip
                deliver(record, settings=settings, broker=broker)


def remind_approval(approval_id: str, conv_id: str, remind_at_ms: int) -> None:
    """Timer: announce a still-pending approval to its room again (a `reminder` room event), once."""
    settings = get_settings()
    now = clock_ms(settings)
    if now < remind_at_ms:
        _timer(setup_broker(settings), REMIND_ACTOR, (approval_id, conv_id, remind_at_ms), remind_at_ms, now)
        return
    stores = _stores_for(settings)
    record = stores.ledger.get(approval_id)
    if record is None or record.state != "pending" or now >= record.expires_ms:
        return
    if not stores.client.set(reminded_key(approval_id), str(now), nx=True, ex=REMINDED_MARK_TTL_S):
        return  # a redelivered timer: the room heard it already
    event = RoomEvent(kind="reminder", record=record)
    stores.client.xadd(
        room_events_key(record.tenant, record.room),
        {"e": _room_event_encoder.encode(event)},
        maxlen=ROOM_EVENTS_MAXLEN,
        approximate=True,
    )


# ---- declaring the actors on a broker ---------------------------------------------------------------

_declared: set[int] = set()


def declare(broker: dramatiq.Broker) -> None:
    """Declare the timer actors on `broker` (idempotent). Workers must do this before they start."""
    if id(broker) in _declared:
        return
    _declared.add(id(broker))
    options: dict[str, Any] = {**TIMER_RETRY.actor_options(), "time_limit": TIMER_TIME_LIMIT_MS}
    for fn, name in ((expire_approval, EXPIRE_ACTOR), (remind_approval, REMIND_ACTOR)):
        dramatiq.Actor(fn, broker=broker, actor_name=name, queue_name=APPROVALS_QUEUE, priority=0,
                       options=options)  # fmt: skip


if (process := process_broker()) is not None:  # a worker set its broker up first: declare on it
    declare(process)


def main() -> None:
    """`python -m actors.approvals`: a worker for the `approvals` queue only (settings from DOCENT_*)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = get_settings()
    broker = setup_broker(settings)
    declare(broker)
    worker = dramatiq.Worker(broker, queues={APPROVALS_QUEUE}, worker_threads=2)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    worker.start()
    try:
        stop.wait()
    finally:
        worker.stop()
        broker.close()


if __name__ == "__main__":
    try:
        main()
    except DocentError as exc:
        raise SystemExit(f"actors.approvals: {exc.code}: {exc.message}") from None
