"""`golden_recall(trigger)` on the `ingest` queue: the active index measured on every golden set.

Triggers:
- "schedule": each worker sends one at boot (`actors.golden_schedule.kick`); a message runs only if it
  claims the chain's slot (`golden:{recall}:due`, SET NX, expiring just before the next run), then
  sends itself again `golden_recall_interval_s` later, so duplicate chains collapse into one (as
  actors.sync_job does);
- "ingest": `actors.ingestion` (through `golden_schedule.after_ingest`) sends one once
  `golden_recall_after_docs` documents were ingested since the last measurement (a Lua counter, so
  concurrent ingests send it once);
- "admin": `POST /admin/golden/recall`.
The scores go to store.golden_recall (newest per set and mode, and a capped history): `/metrics` exposes
them as gauges, `GET /admin/golden/recall` and the admin console show them.
"""

from __future__ import annotations

import logging

import dramatiq
import redis

from actors.broker import INGEST_QUEUE, enqueue_by_name, queue_url, sending_broker, setup_broker
from actors.golden_schedule import GOLDEN_RECALL_ACTOR
from store.catalog import Catalog
from store.clock import now_ms
from store.exceptions import DocentError, InputError
from store.golden_recall import DUE, Trigger, record_plan
from store.redis import sync_client
from store.scripts import SyncRunner
from store.settings import Settings, get_settings

TRIGGERS: tuple[Trigger, ...] = ("schedule", "ingest", "admin")
SLOT_MARGIN = 0.9  # the slot expires at 90% of the interval, so the chain's own next message finds it free
TIME_LIMIT_MS = 3_600_000
NOTHING_YET_RETRY_S = 300  # a scheduled run that found nothing to measure tries again this much later

log = logging.getLogger(__name__)


def golden_recall(trigger: str) -> None:
    """The actor's body: measure and record; a scheduled run claims its slot first and sends the next."""
    kind = next((t for t in TRIGGERS if t == trigger), None)
    if kind is None:
        raise InputError(f"unknown golden recall trigger {trigger!r}")
    settings = get_settings()
    client = sync_client(settings.redis_url)
    try:
        if kind == "schedule" and not _claim_slot(client, settings):
            return  # measured within the interval, or another chain's message won: this one ends
        measured = measure(settings, client, kind)
        if kind == "schedule":
            if not measured:  # no active version yet (a first start): look again soon, not an interval later
                client.delete(DUE)
            _send_next(settings, settings.golden_recall_interval_s if measured else NOTHING_YET_RETRY_S)
    finally:
        client.close()


def measure(settings: Settings, client: redis.Redis, trigger: Trigger) -> int:
    """Measure the active version and record the scores; returns how many (0: nothing measurable)."""
    from index.golden_watch import measure_active  # loads numpy, the embedder and the indexes

    catalog = Catalog.for_data_dir(settings.data_path)
    try:
        scores = measure_active(settings, catalog, trigger, now_ms())
    except DocentError as exc:  # no active version yet, an unreadable golden set: logged, retried later
        log.warning("golden recall not measured: %s: %s", exc.code, exc.message)
        return 0
    finally:
        catalog.close()
    SyncRunner(client).run(record_plan(scores))
    for s in scores:
        log.info(
            "golden recall %s/%s on %s: nDCG@10 %.3f, recall@20 %.3f (%d queries, %s)",
            s.golden_set, s.mode, s.index_version, s.ndcg_at_10, s.recall_at_20, s.queries, trigger,
        )  # fmt: skip
    return len(scores)


def _claim_slot(client: redis.Redis, settings: Settings) -> bool:
    slot_ms = max(1, int(settings.golden_recall_interval_s * 1000 * SLOT_MARGIN))
    return bool(client.set(DUE, "1", nx=True, px=slot_ms))


def _send_next(settings: Settings, delay_s: int) -> None:
    broker = sending_broker(queue_url(settings))
    try:
        delay_ms = min(delay_s, settings.golden_recall_interval_s) * 1000
        enqueue_by_name(broker, INGEST_QUEUE, GOLDEN_RECALL_ACTOR, ("schedule",), delay_ms=delay_ms)
    finally:
        broker.close()


golden_recall_actor: dramatiq.Actor[[str], None] = dramatiq.Actor(
    golden_recall, broker=setup_broker(), actor_name=GOLDEN_RECALL_ACTOR, queue_name=INGEST_QUEUE,
    priority=20, options={"max_retries": 0, "time_limit": TIME_LIMIT_MS},
)  # fmt: skip
