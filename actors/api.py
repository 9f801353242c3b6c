"""What the web process may call in the actors layer: hand an inbound item to a conversation and wake it.

The web process never writes a conversation's durable log (the actor is its single writer). It appends the
item to the conversation's inbox stream `conv:{<id>}:inbox` (deduplicated by `dedup_id`) and sends the
actor an `advance(conversation_id)` message. Nothing here loads a model or an index, and nothing here
imports an actor module: messages are built as raw `dramatiq.Message`s by queue and actor name.

    wake = make_wake(settings)          # async (conv_id) -> None: enqueue advance(conv_id)
    ingest = make_ingest(settings)      # async (tenant, path) -> job id: enqueue ingest_file(tenant, path)
    task = make_document_task(settings) # async (actor, doc_id) -> job id: sync_document / reingest_document
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import dramatiq

from store.blocking import run_blocking
from store.events import ApprovalDecided, TurnCancelled, UserMessage
from store.settings import Settings

InboundItem = UserMessage | ApprovalDecided | TurnCancelled

CONVERSATION_QUEUE = "conversation"  # = actors.broker.CONVERSATION_QUEUE (kept import-light here)
INGEST_QUEUE = "ingest"
ADVANCE_ACTOR = "advance"  # actors.conversation
INGEST_ACTOR = "ingest_file"  # actors.ingest_job
DOCUMENT_ACTORS = frozenset({"sync_document", "reingest_document"})  # actors.documents_job


class Dispatcher(Protocol):
    async def submit(self, conversation_id: str, item: InboundItem, *, dedup_id: str) -> str:
        """Append `item` to the conversation's inbox and wake its actor; returns the inbox entry id
        (the existing one when `dedup_id` was seen before)."""
        ...


def _enqueuer(settings: Settings) -> Callable[[dramatiq.Message[Any]], Awaitable[dramatiq.Message[Any]]]:
    broker: dramatiq.Broker | None = None

    async def enqueue(message: dramatiq.Message[Any]) -> dramatiq.Message[Any]:
        nonlocal broker
        if broker is None:
            from actors.broker import setup_broker

            broker = setup_broker(settings)
        return await run_blocking(broker.enqueue, message)

    return enqueue


def make_wake(settings: Settings) -> Callable[[str], Awaitable[None]]:
    """`async wake(conv_id)`: send the conversation actor an `advance(conv_id)` message."""
    enqueue = _enqueuer(settings)

    async def wake(conv_id: str) -> None:
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=CONVERSATION_QUEUE, actor_name=ADVANCE_ACTOR, args=(conv_id,), kwargs={}, options={}
        )
        await enqueue(message)

    return wake


def make_ingest(settings: Settings) -> Callable[[str, Path], Awaitable[str]]:
    """`async ingest(tenant, path) -> job id`: queue the file for the ingest workers."""
    enqueue = _enqueuer(settings)

    async def ingest(tenant: str, path: Path) -> str:
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=INGEST_QUEUE, actor_name=INGEST_ACTOR, args=(tenant, str(path)), kwargs={}, options={}
        )
        sent = await enqueue(message)
        return sent.message_id

    return ingest


def make_document_task(settings: Settings) -> Callable[[str, str], Awaitable[str]]:
    """`async task(actor, doc_id) -> job id`: queue a document job (`actors.documents_job`) for ingest."""
    enqueue = _enqueuer(settings)

    async def task(actor: str, doc_id: str) -> str:
        assert actor in DOCUMENT_ACTORS, actor
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=INGEST_QUEUE, actor_name=actor, args=(doc_id,), kwargs={}, options={}
        )
        return (await enqueue(message)).message_id

    return task
