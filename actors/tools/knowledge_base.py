"""The contract a tool reads the knowledge base through (`ToolContext.knowledge`): access-checked search and
read, as the asking principal. `actors/kb.py` implements it over the index; the tools only see this.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from index.types import Hit, Principal
from store.metadata import Filters


class KnowledgeBase(Protocol):
    """Access-checked reads of the knowledge base."""

    async def search(
        self, query: str, principal: Principal, k: int, filters: Filters = None
    ) -> Sequence[Hit]:
        """The best `k` chunks this principal may read, of documents matching every filter set."""
        ...

    async def read(self, doc_id: str, principal: Principal) -> tuple[str, str] | None:
        """(title, text) of a document, or None when it does not exist or the principal may not read it."""
        ...
