"""The dramatiq entry module: `dramatiq actors.worker --queues conversation` (or `ingest reindex`, ...).

The broker is set up FIRST (`actors.broker.setup_broker`, from `DOCENT_*` settings), then the actor
modules are imported so that they declare their actors on it:

    actors.conversation   advance(conversation_id)          queue conversation
    actors.ingest_job     ingest_file(tenant, path[, meta]) queue ingest
    actors.documents_job  sync_document, reingest_document  queue ingest
    actors.search_job     search_request(request_id, call)  queue conversation
    actors.sync_job       sync_source(dir)                  queue ingest (scheduled folder syncs)
    actors.golden_recall_job  golden_recall(trigger)        queue ingest (the golden sets re-measured)
    actors.demo_job       demo_ingest(modules)              queue ingest (the demo's background pages)
    actors.approvals      expiry and reminder timers        queue approvals   (when present)
    actors.reindex        index rebuilds                    queue reindex     (when present)

Modules other helpers provide are imported only if they exist; any other import error is raised, never
hidden. Nothing here loads a model or an index: that happens at the first message that needs one.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import threading

import dramatiq

from actors.broker import setup_broker
from store import tracing
from store.permissions import private_umask
from store.redis_identity import verify_at_boot
from store.settings import get_settings

REQUIRED_MODULES = (
    "actors.conversation", "actors.ingest_job", "actors.documents_job", "actors.search_job",
    "actors.sync_job", "actors.golden_recall_job", "actors.demo_job",
)  # fmt: skip
OPTIONAL_MODULES = ("actors.approvals", "actors.reindex")

log = logging.getLogger(__name__)

private_umask()
# Refuse, before consuming anything, a Redis that is not the one `docent run` started for this stack.
verify_at_boot(get_settings())
tracing.configure("worker")  # OTLP traces when OTEL_EXPORTER_OTLP_ENDPOINT is set (store.tracing)
broker: dramatiq.Broker = setup_broker()


def _import_optional(name: str) -> bool:
    if importlib.util.find_spec(name) is None:  # not written yet: the worker runs without it
        log.info("%s is not installed; its queue has no actors in this worker", name)
        return False
    module = importlib.import_module(name)
    declare = getattr(module, "declare", None)
    if callable(declare):
        declare(broker)  # idempotent; covers modules that declare only on request
    return True


for _name in REQUIRED_MODULES:
    importlib.import_module(_name)

if get_settings().warm_start:
    from actors.runtime import warm_up

    threading.Thread(target=warm_up, name="warm-start", daemon=True).start()
LOADED = REQUIRED_MODULES + tuple(n for n in OPTIONAL_MODULES if _import_optional(n))

if get_settings().sync_sources_path:  # a bad sources file stops the worker here (config_error)
    from actors.sync_job import kick

    kick(get_settings())  # one message per source; a source synced within its interval ignores it
if get_settings().golden_recall_interval_s > 0:
    from actors.golden_schedule import kick as kick_golden_recall

    kick_golden_recall(get_settings())  # the scheduled re-measurement's chain (one, however many workers)
