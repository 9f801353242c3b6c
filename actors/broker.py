"""The one dramatiq broker every actor module declares on, from the settings: dramatiq's Redis broker,
or its RabbitMQ broker for an `amqp://` DOCENT_BROKER_URL.

Where the queues live (`queue_url`): DOCENT_BROKER_URL when set, else the Redis of DOCENT_REDIS_URL.
dramatiq's Redis broker does not speak Redis Cluster (its Lua script touches keys of many slots), so a
`redis+cluster://` DOCENT_REDIS_URL needs DOCENT_BROKER_URL: a separate single-node Redis (the default
choice, README "Redis Cluster") or RabbitMQ.

`setup_broker()` is idempotent and must run before any module declares an actor (`actors.worker`
imports this first). Tests call it with their own Redis URL, or `use_stub_broker()` for pure unit tests.
Queues: `conversation` (advance a conversation actor), `ingest` (documents), `reindex` (index rebuilds),
`approvals` (expiry and reminder timers). The workers poll idle queues every `dramatiq_worker_timeout` ms
(20 under `docent run`, for the conversation queue's pick-up); the approvals queue and its delay queue carry
only timers hours to days ahead, and back off to TIMER_QUEUE_POLL_MS instead (~90 fewer idle polls a second
per worker process: each a script call that also writes the worker's heartbeat).

`AsyncEnqueuer` sends from an event loop (the web's wake-ups) on the Redis broker without a thread hop:
dramatiq's own message and dispatch script (its `enqueue` command, with the arguments
`RedisBroker.enqueue` passes), over an asyncio client; the RabbitMQ broker is sent to from a thread.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from uuid import uuid4

import dramatiq
import redis.asyncio as aredis
from dramatiq.brokers import redis as dramatiq_redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import current_millis, dq_name

from store.blocking import run_blocking
from store.exceptions import ConfigError
from store.redis import async_client, is_cluster_url
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
TIMER_QUEUES = frozenset({APPROVALS_QUEUE, dq_name(APPROVALS_QUEUE)})
TIMER_QUEUE_POLL_MS = 250  # an idle timer queue's poll backoff cap: a timer fires at most this late


class QueuesRedisBroker(RedisBroker):
    """dramatiq's Redis broker, with the timer queues' consumers polling at most every TIMER_QUEUE_POLL_MS
    when idle (dramatiq gives every queue of a worker the same cap)."""

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> dramatiq.Consumer:
        if queue_name in TIMER_QUEUES:
            timeout = max(timeout, TIMER_QUEUE_POLL_MS)
        return super().consume(queue_name, prefetch, timeout)


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
    return QueuesRedisBroker(
        url=url, namespace=NAMESPACE, **{k: v for k, v in options.items() if v is not None}
    )


def process_broker() -> dramatiq.Broker | None:
    """The broker this process set up (or stubbed), if any; actor modules declare on it when it exists."""
    return _broker


@lru_cache(maxsize=8)
def sending_broker(url: str) -> dramatiq.Broker:
    """An enqueue-only broker on `url` (a `queue_url`) for a process that declares no actor (the web
    process, tests, the chaos runner): never made the process's global broker."""
    return make_broker(url)


def by_name(queue: str, actor: str, args: tuple[Any, ...]) -> dramatiq.Message[Any]:
    return dramatiq.Message(queue_name=queue, actor_name=actor, args=args, kwargs={}, options={})


def enqueue_by_name(
    broker: dramatiq.Broker, queue: str, actor: str, args: tuple[Any, ...], *, delay_ms: int = 0
) -> dramatiq.Message[Any]:
    """Send `actor(*args)` on `queue` by name: the one way we enqueue, importing nothing of the actor."""
    return broker.enqueue(by_name(queue, actor, args), delay=delay_ms or None)


class AsyncEnqueuer:
    """`await send(queue, actor, args)`: `enqueue_by_name` (no delay) from an event loop. On the Redis broker
    it runs dramatiq's dispatch script over an asyncio client, with what `RedisBroker.enqueue` and its
    `do_enqueue` pass (the message with a fresh `redis_message_id`, the broker's id, timeouts and maintenance
    draw, the enqueue middleware hooks around it), so a dramatiq worker cannot tell the two apart
    (tests/test_broker_async.py consumes one); any other broker is sent to on the blocking pool."""

    def __init__(self, url: str) -> None:
        self.broker = sending_broker(url)
        self.client: aredis.Redis | None = None
        self._script: Any = None
        self._unpack_size: int | None = None
        if isinstance(self.broker, RedisBroker):
            self.client = async_client(url)
            self._script = self.client.register_script(dramatiq_redis._scripts["dispatch"])

    async def send(self, queue: str, actor: str, args: tuple[Any, ...]) -> dramatiq.Message[Any]:
        broker = self.broker
        if self.client is None or not isinstance(broker, RedisBroker):
            return await run_blocking(enqueue_by_name, broker, queue, actor, args)
        if self._unpack_size is None:  # dramatiq's own lookup (a script call, once per process)
            self._unpack_size = await run_blocking(broker._max_unpack_size)
        message = by_name(queue, actor, args).copy(options={"redis_message_id": str(uuid4())})
        broker.emit_before("enqueue", message, None)
        await self._script(
            keys=[broker.namespace],
            args=[
                "enqueue", current_millis(), queue, broker.broker_id, broker.heartbeat_timeout,
                broker.dead_message_ttl, broker._should_do_maintenance("enqueue"), self._unpack_size,
                message.options["redis_message_id"], message.encode(),
            ],
        )  # fmt: skip
        broker.emit_after("enqueue", message, None)
        return message

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()


def use_stub_broker() -> dramatiq.Broker:
    """An in-memory broker for unit tests that never deliver messages across processes."""
    global _broker
    broker = StubBroker()
    dramatiq.set_broker(broker)
    _broker = broker
    return broker
