"""When the active index's golden-set recall is re-measured: the messages that start
`golden_recall(trigger)` (actors.golden_recall_job), sent by name so senders import no actor.

- `kick`: a worker's boot starts (or joins) the scheduled chain;
- `after_ingest`: every ingest counts its changed documents; the one that completes a batch of
  `golden_recall_after_docs` sends a measurement (a Lua counter, so concurrent ingests send it once).
"""

from __future__ import annotations

import logging

import redis

from actors.api import send
from actors.broker import INGEST_QUEUE
from store.exceptions import DocentError
from store.golden_recall import ingested_plan
from store.scripts import SyncRunner
from store.settings import Settings

GOLDEN_RECALL_ACTOR = "golden_recall"

log = logging.getLogger(__name__)


def kick(settings: Settings) -> bool:
    """Start (or join) the scheduled chain; False when the schedule is off."""
    if settings.golden_recall_interval_s <= 0:
        return False
    send(settings, INGEST_QUEUE, GOLDEN_RECALL_ACTOR, "schedule")
    return True


def after_ingest(settings: Settings, client: redis.Redis | None, documents: int) -> bool:
    """Count `documents` just changed (on the ingest's own client; None: no Redis, nothing counted); True
    when that completed a batch and a measurement was sent."""
    if client is None or settings.golden_recall_after_docs <= 0 or documents <= 0:
        return False
    try:
        due = SyncRunner(client).run(ingested_plan(documents, settings.golden_recall_after_docs))
        if due:
            send(settings, INGEST_QUEUE, GOLDEN_RECALL_ACTOR, "ingest")
    except DocentError as exc:  # the ingest is done; only the re-measurement is skipped
        log.warning("golden recall not scheduled after ingest: %s: %s", exc.code, exc.message)
        return False
    return due
