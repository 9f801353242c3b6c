"""The one dramatiq broker every actor module declares on: Redis, from the settings.

`setup_broker()` is idempotent and must run before any module declares an actor (`actors.worker`
imports this first). Tests call it with their own Redis URL, or `use_stub_broker()` for pure unit tests.
Queues: `conversation` (advance a conversation actor), `ingest` (documents), `reindex` (index rebuilds),
`approvals` (expiry and reminder timers).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from store.exceptions import ConfigError
from store.settings import Settings, get_settings

CONVERSATION_QUEUE = "conversation"
INGEST_QUEUE = "ingest"
REINDEX_QUEUE = "reindex"
APPROVALS_QUEUE = "approvals"
ADVANCE_ACTOR = "advance"  # actors.conversation
INGEST_ACTOR = "ingest_file"  # actors.ingest_job
NAMESPACE = "docent-tasks"

_broker: dramatiq.Broker | None = None


def setup_broker(settings: Settings | None = None) -> dramatiq.Broker:
    """Create the Redis broker once per process and make it dramatiq's global broker."""
    global _broker
    if _broker is not None:
        return _broker
    settings = settings or get_settings()
    if not settings.redis_url:
        raise ConfigError("workers need DOCENT_REDIS_URL (`docent run` starts an embedded Redis for you)")
    broker = RedisBroker(
        url=settings.redis_url,
        namespace=NAMESPACE,
        heartbeat_timeout=settings.broker_heartbeat_timeout_ms,
        maintenance_chance=settings.broker_maintenance_chance,
    )
    dramatiq.set_broker(broker)
    _broker = broker
    return broker


def process_broker() -> dramatiq.Broker | None:
    """The broker this process set up (or stubbed), if any; actor modules declare on it when it exists."""
    return _broker


@lru_cache(maxsize=8)
def sending_broker(redis_url: str) -> RedisBroker:
    """An enqueue-only broker for a process that declares no actor (the web process, tests, the chaos
    runner): never made the process's global broker."""
    return RedisBroker(url=redis_url, namespace=NAMESPACE)


def enqueue_by_name(
    broker: dramatiq.Broker, queue: str, actor: str, args: tuple[Any, ...], *, delay_ms: int = 0
) -> dramatiq.Message[Any]:
    """Send `actor(*args)` on `queue` by name: the one way we enqueue, importing nothing of the actor."""
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=queue, actor_name=actor, args=args, kwargs={}, options={}
    )
    return broker.enqueue(message, delay=delay_ms or None)


def use_stub_broker() -> dramatiq.Broker:
    """An in-memory broker for unit tests that never deliver messages across processes."""
    global _broker
    broker = StubBroker()
    dramatiq.set_broker(broker)
    _broker = broker
    return broker
