"""What the web process may call in the actors layer: hand an inbound item to a conversation and wake it.

The web process never writes a conversation's durable log (the actor is its single writer). It appends the
item to the conversation's inbox stream `conv:{<id>}:inbox` (deduplicated by `dedup_id`) and sends the
actor an `advance(conversation_id)` message. Nothing here loads a model or an index.
"""

from __future__ import annotations

from typing import Protocol

from store.events import ApprovalDecided, TurnCancelled, UserMessage

InboundItem = UserMessage | ApprovalDecided | TurnCancelled


class Dispatcher(Protocol):
    async def submit(self, conversation_id: str, item: InboundItem, *, dedup_id: str) -> str:
        """Append `item` to the conversation's inbox and wake its actor; returns the inbox entry id
        (the existing one when `dedup_id` was seen before)."""
        ...
