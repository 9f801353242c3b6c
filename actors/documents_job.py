"""Document lifecycle jobs on the `ingest` queue, sent by the documents API (`actors.api.make_document_task`).

    sync_document(doc_id)      after a catalog-only delete or readers change: every current index version's
                               Whoosh and USearch files are brought in line (hidden entries collected, Whoosh
                               entries rewritten with the catalog's readers; nothing is embedded)
    reingest_document(doc_id)  read the document's source file again into every current version, with the
                               readers the catalog holds now (an unchanged file is a no-op)

The catalog change that makes a delete or a readers change effective happens before the job is sent
(search checks the catalog), so these jobs only converge the index files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import dramatiq

from actors.broker import INGEST_QUEUE, setup_broker
from store.catalog import Catalog
from store.redis import sync_client
from store.retry import RetryPolicy
from store.settings import get_settings

SYNC_ACTOR = "sync_document"
REINGEST_ACTOR = "reingest_document"
TIME_LIMIT_MS = 3_600_000
RETRY = RetryPolicy(max_retries=3, first_s=15.0, max_s=3600.0)

log = logging.getLogger(__name__)


def sync_document(doc_id: str) -> None:
    from index.reindex.dualwrite import DualWriter

    settings = get_settings()
    client = sync_client(settings.redis_url)
    try:
        with DualWriter(settings, client) as writer:
            rewritten = writer.resync(doc_id)
    finally:
        client.close()
    log.info("synced %s into the index files: %d entries rewritten", doc_id, rewritten)


def reingest_document(doc_id: str) -> None:
    from actors.ingestion import ingest_documents
    from index.types import Access

    settings = get_settings()
    catalog = Catalog.for_data_dir(settings.data_path)
    try:
        document = catalog.get_document(doc_id)
    finally:
        catalog.close()
    if document is None or document.deleted:
        log.warning("reingest of %s skipped: not in the catalog", doc_id)
        return
    access = Access(tenant=document.tenant, readers=document.readers)
    request = {"path": Path(document.source), "access": access, "source": document.source,
               "metadata": document.metadata}  # what it was given at ingest stays  # fmt: skip
    outcomes = ingest_documents(settings, [(doc_id, request)])
    log.info("reingested %s: %s", doc_id, [o.status for o in outcomes])


def _declare(fn: object, name: str) -> dramatiq.Actor[[str], None]:
    options = {**RETRY.actor_options(), "time_limit": TIME_LIMIT_MS}
    return dramatiq.Actor(
        fn, broker=setup_broker(), actor_name=name, queue_name=INGEST_QUEUE, priority=0, options=options  # type: ignore[arg-type]
    )


sync_actor = _declare(sync_document, SYNC_ACTOR)
reingest_actor = _declare(reingest_document, REINGEST_ACTOR)
