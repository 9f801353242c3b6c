"""The ingest actor: `ingest_file(tenant, path[, metadata])` on the `ingest` queue (offline embedding, own
batch size); `metadata` is the document's metadata as JSON (store.metadata), checked again here.

The web process enqueues it with `actors.api.make_ingest` (a raw message: the web process never imports
this module). The file is ingested into the active index version, readable by the whole tenant; the
embedder is loaded once per worker process, at the first job.
"""

from __future__ import annotations

import logging
from pathlib import Path

import dramatiq

from actors.broker import INGEST_ACTOR, INGEST_QUEUE, setup_broker
from store.retry import RetryPolicy
from store.settings import get_settings

TIME_LIMIT_MS = 3_600_000
RETRY = RetryPolicy(max_retries=3, first_s=15.0, max_s=7 * 24 * 3600.0)  # dramatiq's default backoff

log = logging.getLogger(__name__)


def ingest_file(tenant: str, path: str, metadata: str = "") -> None:
    """The actor's body (dramatiq keeps no results, so the outcome goes to the log)."""
    from actors.ingestion import ingest_files, summary
    from index.types import Access
    from store.metadata import EMPTY_METADATA, parse_metadata

    given = parse_metadata(metadata) if metadata else EMPTY_METADATA
    report = summary(ingest_files(get_settings(), [Path(path)], Access(tenant=tenant), metadata=given))
    log.info("ingested %s for %s: %s", path, tenant, {k: report[k] for k in ("outcomes", "errors")})


ingest_actor: dramatiq.Actor[[str, str, str], None] = dramatiq.Actor(
    ingest_file,
    broker=setup_broker(),
    actor_name=INGEST_ACTOR,
    queue_name=INGEST_QUEUE,
    priority=0,
    options={**RETRY.actor_options(), "time_limit": TIME_LIMIT_MS},
)
