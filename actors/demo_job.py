"""The background demo ingest's actor: `demo_ingest(modules)` on the ingest queue (actors/demo_background.py
says what a run does). Each message works one slice under the run's lease, then sends itself again until
the run is done; a message that finds the lease held comes back when it expires.

The web process never imports this module; `docent run` queues the first message by name.
"""

from __future__ import annotations

import dramatiq

from actors.broker import DEMO_ACTOR, INGEST_QUEUE, setup_broker
from actors.demo_background import NAME, record_failure, run_slice
from index.reindex.lease import Lease
from index.reindex.run import lower_priority
from store import ingest_progress as progress
from store.redis import sync_client
from store.retry import RetryPolicy
from store.settings import get_settings

TIME_LIMIT_MS = 60 * 60 * 1000  # rendering plus one slice; slices themselves are short
RETRY = RetryPolicy(max_retries=20, first_s=1.0, max_s=30.0)
BUSY_MARGIN_MS = 250


def demo_ingest(modules: str = "") -> None:
    """The actor's body: one slice under the run's lease, then itself again until the run is done."""
    settings = get_settings()
    lower_priority()  # the bulk path: the conversation worker keeps the CPU for answers
    names = [m for m in modules.split(",") if m]
    client = sync_client(settings.redis_url)
    try:
        lease = Lease(client, NAME, settings.demo_lease_ms, key=progress.lease_key(NAME))
        if not lease.acquire():  # another worker has it (or a dead one, until the lease expires)
            delay_ms = max(0, int(client.pttl(progress.lease_key(NAME)))) + BUSY_MARGIN_MS
            demo_actor.send_with_options(args=(modules,), delay=delay_ms)
            return
        try:
            record = run_slice(settings, client, names, lease)
        except Exception as exc:
            record_failure(client, exc)
            raise
        finally:
            lease.release()
    finally:
        client.close()
    if record.status != "done" and not lease.lost.is_set():
        demo_actor.send(modules)


demo_actor: dramatiq.Actor[[str], None] = dramatiq.Actor(
    demo_ingest,
    broker=setup_broker(),
    actor_name=DEMO_ACTOR,
    queue_name=INGEST_QUEUE,
    priority=10,  # behind uploads (priority 0) when both wait
    options={**RETRY.actor_options(), "time_limit": TIME_LIMIT_MS},
)
