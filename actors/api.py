"""What the web process may call in the actors layer: hand an inbound item to a conversation and wake it.

The web process never writes a conversation's durable log (the actor is its single writer). It appends the
item to the conversation's inbox stream `conv:{<id>}:inbox` (deduplicated by `dedup_id`) and sends the
actor an `advance(conversation_id)` message. Nothing here loads a model or an index, and nothing here
imports an actor module: messages are sent by queue and actor name (`actors.broker.enqueue_by_name`) on
an enqueue-only broker.

    wake = make_wake(settings)          # async (conv_id) -> None: enqueue advance(conv_id) (`wake.aclose()`)
    ingest = make_ingest(settings)      # async (tenant, path, metadata) -> job id: enqueue ingest_file
    enqueue_reindex(settings, job_id)   # reindex_run(job_id), blocking
    task = make_document_task(settings) # async (actor, doc_id) -> job id: sync_document / reingest_document
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from actors.broker import (
    ADVANCE_ACTOR,
    CONVERSATION_QUEUE,
    INGEST_ACTOR,
    INGEST_QUEUE,
    REINDEX_QUEUE,
    AsyncEnqueuer,
    enqueue_by_name,
    queue_url,
    sending_broker,
)
from index.reindex.jobs import RUN_ACTOR_NAME
from store.blocking import run_blocking
from store.events import ApprovalDecided, Feedback, TurnCancelled, UserMessage
from store.metadata import EMPTY_METADATA, DocumentMetadata, encode_metadata
from store.settings import Settings

InboundItem = UserMessage | ApprovalDecided | TurnCancelled | Feedback
DOCUMENT_ACTORS = frozenset({"sync_document", "reingest_document"})  # actors.documents_job


class Dispatcher(Protocol):
    async def submit(self, conversation_id: str, item: InboundItem, *, dedup_id: str) -> str:
        """Append `item` to the conversation's inbox and wake its actor; returns the inbox entry id
        (the existing one when `dedup_id` was seen before)."""
        ...


def send(settings: Settings, queue: str, actor: str, *args: str) -> str:
    """Enqueue `actor(*args)` by name on the enqueue-only broker; returns the message id."""
    return enqueue_by_name(sending_broker(queue_url(settings)), queue, actor, args).message_id


class Wake:
    """`await wake(conv_id)`: send the conversation actor an `advance(conv_id)` message, from the event loop
    (`actors.broker.AsyncEnqueuer`: no thread hop per ask on the Redis broker)."""

    def __init__(self, settings: Settings) -> None:
        self.enqueuer = AsyncEnqueuer(queue_url(settings))

    async def __call__(self, conv_id: str) -> None:
        await self.enqueuer.send(CONVERSATION_QUEUE, ADVANCE_ACTOR, (conv_id,))

    async def aclose(self) -> None:
        await self.enqueuer.aclose()


def make_wake(settings: Settings) -> Wake:
    return Wake(settings)


def make_ingest(settings: Settings) -> Callable[[str, Path, DocumentMetadata], Awaitable[str]]:
    """`async ingest(tenant, path, metadata) -> job id`: queue the file for the ingest workers (the metadata,
    already validated, travels as its JSON; none: the message of before, two arguments)."""

    async def ingest(tenant: str, path: Path, metadata: DocumentMetadata = EMPTY_METADATA) -> str:
        extra = () if metadata.is_empty() else (encode_metadata(metadata),)
        return await run_blocking(send, settings, INGEST_QUEUE, INGEST_ACTOR, tenant, str(path), *extra)

    return ingest


def enqueue_reindex(settings: Settings, job_id: str) -> None:
    """Send `reindex_run(job_id)` to the reindex queue (blocking: call it from a thread in async code)."""
    send(settings, REINDEX_QUEUE, RUN_ACTOR_NAME, job_id)


def make_document_task(settings: Settings) -> Callable[[str, str], Awaitable[str]]:
    """`async task(actor, doc_id) -> job id`: queue a document job (`actors.documents_job`) for ingest."""

    async def task(actor: str, doc_id: str) -> str:
        assert actor in DOCUMENT_ACTORS, actor
        return await run_blocking(send, settings, INGEST_QUEUE, actor, doc_id)

    return task
