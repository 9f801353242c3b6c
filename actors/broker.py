"""The one dramatiq broker every actor module declares on, from the settings: dramatiq's Redis broker,
or its RabbitMQ broker for an `amqp://` DOCENT_BROKER_URL.

Where the queues live (`queue_url`): DOCENT_BROKER_URL when set, else the Redis of DOCENT_REDIS_URL.
dramatiq's Redis broker does not speak Redis Cluster (its Lua script touches keys of many slots), so a
`redis+cluster://` DOCENT_REDIS_URL needs DOCENT_BROKER_URL: a separate single-node Redis (the default
choice, README "Redis Cluster") or RabbitMQ.

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
from store.redis import is_cluster_url
from store.settings import Settings, get_settings

CONVERSATION_QUEUE = "conversation"
INGEST_QUEUE = "ingest"
REINDEX_QUEUE = "reindex"
APPROVALS_QUEUE = "approvals"
ADVANCE_ACTOR = "advance"  # actors.conversation
INGEST_ACTOR = "ingest_file"  # actors.ingest_job
DEMO_ACTOR = "demo_ingest"  # actors.demo_job
NAMESPACE = "docent-tasks"
AMQP_SCHEMES = ("amqp://", "amqps://")

_broker: dramatiq.Broker | None = None


def setup_broker(settings: Settings | None = None) -> dramatiq.Broker:
    """Create the Redis broker once per process and make it dramatiq's global broker."""
    global _broker
    if _broker is not None:
        return _broker
    settings = settings or get_settings()
    broker = make_broker(
        queue_url(settings),
        heartbeat_timeout=settings.broker_heartbeat_timeout_ms,
        maintenance_chance=settings.broker_maintenance_chance,
    )
    dramatiq.set_broker(broker)
    _broker = broker
    return broker


def queue_url(settings: Settings) -> str:
    """The broker's URL: DOCENT_BROKER_URL, else DOCENT_REDIS_URL when it is a single Redis."""
    url = settings.broker_url or settings.redis_url
    if not url:
        raise ConfigError("workers need DOCENT_REDIS_URL (`docent run` starts an embedded Redis for you)")
    if is_cluster_url(url):
        raise ConfigError(
            "dramatiq's queues cannot live on a Redis Cluster: set DOCENT_BROKER_URL to a single Redis "
            "(redis://) or to RabbitMQ (amqp://)",
            setting="DOCENT_BROKER_URL",
        )
    return url


def make_broker(
    url: str, *, heartbeat_timeout: int | None = None, maintenance_chance: int | None = None
) -> dramatiq.Broker:
    """dramatiq's RabbitMQ broker for amqp(s)://, else its Redis broker under our namespace (the
    heartbeat and maintenance options are the Redis broker's; None = dramatiq's defaults)."""
    if url.startswith(AMQP_SCHEMES):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=url)
    options = {"heartbeat_timeout": heartbeat_timeout, "maintenance_chance": maintenance_chance}
    return RedisBroker(url=url, namespace=NAMESPACE, **{k: v for k, v in options.items() if v is not None})


def process_broker() -> dramatiq.Broker | None:
    """The broker this process set up (or stubbed), if any; actor modules declare on it when it exists."""
    return _broker


@lru_cache(maxsize=8)
def sending_broker(url: str) -> dramatiq.Broker:
    """An enqueue-only broker on `url` (a `queue_url`) for a process that declares no actor (the web
    process, tests, the chaos runner): never made the process's global broker."""
    return make_broker(url)


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
