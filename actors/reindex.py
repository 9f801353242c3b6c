"""The reindex actor (queue "reindex"): runs a rebuild job in time slices until it ends.

`reindex_run(job_id)` works on the job for `settings.reindex_slice_s` (index.reindex.run_slice: every
document is checkpointed as it is committed), then sends itself again. A worker killed mid-slice loses at
most the document it was embedding: the broker redelivers the unacknowledged message once the dead
worker's heartbeat times out (`settings.broker_heartbeat_timeout_ms`), and the next slice takes the job's
lease (`settings.reindex_lease_ms`) and resumes from the checkpoint. A message that finds the lease still
held comes back when it expires.

The web process enqueues by actor name (index.reindex.RUN_ACTOR_NAME) without importing this module.
`python -m actors.reindex` runs a single-process worker on the reindex queue only (tests, benchmarks).
"""

from __future__ import annotations

import logging
import signal
import threading

import dramatiq

from actors.broker import REINDEX_QUEUE, setup_broker
from index.reindex.jobs import RUN_ACTOR_NAME
from index.reindex.run import lower_priority, run_slice
from store import keys
from store.redis import sync_client
from store.retry import RetryPolicy
from store.settings import get_settings

log = logging.getLogger(__name__)

TIME_LIMIT_MS = 60 * 60 * 1000  # a slice plus the golden-set gate; slices themselves are short
RETRY = RetryPolicy(max_retries=20, first_s=1.0, max_s=30.0)
BUSY_MARGIN_MS = 250

broker = setup_broker()  # idempotent: actors.worker has set it up already with the same settings


@dramatiq.actor(
    actor_name=RUN_ACTOR_NAME,
    queue_name=REINDEX_QUEUE,
    time_limit=TIME_LIMIT_MS,
    **RETRY.actor_options(),
)
def reindex_run(job_id: str) -> None:
    settings = get_settings()
    lower_priority()  # the bulk path: query workers keep the CPU
    client = sync_client(settings.redis_url)
    try:
        result = run_slice(settings, client, job_id)
        if result == "busy":  # another worker holds the lease (or a dead one, until it expires)
            delay_ms = max(0, int(client.pttl(keys.reindex_lease(job_id)))) + BUSY_MARGIN_MS
    finally:
        client.close()
    if result == "continue":
        reindex_run.send(job_id)
    elif result == "busy":
        reindex_run.send_with_options(args=(job_id,), delay=delay_ms)


def main() -> None:
    """A single-process worker consuming only the reindex queue, until SIGTERM or SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    worker = dramatiq.Worker(broker, queues={REINDEX_QUEUE}, worker_threads=1)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    worker.start()
    log.info("reindex worker ready")
    stop.wait()
    worker.stop()


if __name__ == "__main__":
    main()
