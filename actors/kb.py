"""The agent's `KnowledgeBase` over the retrieval issue's `SearchService`, always as the asking principal.

    kb = ServiceKnowledgeBase(SearchService(settings))
    result = await kb.retrieve("how long is parental leave", principal, k=8)   # SearchResult (+ version)
    result = await kb.retrieve(query, principal, k=8, filters=SearchFilters(tags_any=("hr",)))
    hits = await kb.search(query, principal, k)                                # the knowledge tools
    found = await kb.read(doc_id, principal)                                   # (title, text) or None
    again = await kb.recall(query, principal, chunk_ids)                       # replay: the same chunks

Access control lives in the index layer (search never returns a chunk the principal may not read, `read`
answers None for a document it may not read); nothing here widens it. `recall` serves replay: the durable
log records only the chunk ids a step was given (`RetrievalDone`), so after a crash the actor searches again
with the same query and principal and keeps exactly the recorded chunks, in the recorded order. The search
is deterministic for one index version; a chunk that vanished (re-ingested, deleted, no longer readable)
is dropped rather than guessed.
"""

from __future__ import annotations

from collections.abc import Sequence

from index.embed import Matrix
from index.search import SearchService
from index.types import Hit, Principal, SearchResult
from store.blocking import run_blocking, run_short
from store.exceptions import IndexNotFound
from store.metadata import Filters

RECALL_MIN_K = 20
TITLES_LIMIT = 1000  # the catalog's page size; a larger tenant needs a title index (not built)


class ServiceKnowledgeBase:
    """Satisfies `actors.tools.knowledge.KnowledgeBase`, plus what the Q&A route needs."""

    def __init__(self, service: SearchService) -> None:
        self.service = service

    async def retrieve(
        self, query: str, principal: Principal, k: int, filters: Filters = None
    ) -> SearchResult:
        """Top `k` chunks this principal may read (of documents matching `filters`); an empty result
        (version "") when nothing is indexed."""
        try:
            result = await self.service.search(query, principal, k=k, filters=filters)
        except IndexNotFound:
            return SearchResult(query=query, index_version="", hits=[])
        return await self.service.sections(result, principal)

    async def search(
        self, query: str, principal: Principal, k: int, filters: Filters = None
    ) -> Sequence[Hit]:
        return (await self.retrieve(query, principal, k, filters)).hits

    async def read(self, doc_id: str, principal: Principal) -> tuple[str, str] | None:
        return await self.service.read(doc_id, principal)

    async def recall(
        self, query: str, principal: Principal, chunk_ids: Sequence[str], filters: Filters = None
    ) -> list[Hit]:
        """The recorded chunks again, in the recorded order (those still readable and findable)."""
        if not chunk_ids:
            return []
        result = await self.retrieve(query, principal, max(RECALL_MIN_K, 2 * len(chunk_ids)), filters)
        by_id = {hit.chunk_id: hit for hit in result.hits}
        return [by_id[c] for c in chunk_ids if c in by_id]

    async def readable_documents(self, doc_ids: Sequence[str], principal: Principal) -> set[str]:
        """The subset of `doc_ids` this principal may read now (catalog ACL, deleted documents excluded)."""

        def check() -> set[str]:
            readable = set()
            tokens = principal.reader_tokens()
            for doc_id in set(doc_ids):
                document = self.service.catalog.get_document(doc_id)
                if document is not None and document.readable_by(principal.tenant, tokens):
                    readable.add(doc_id)
            return readable

        return await run_short(check)

    async def titles(self, principal: Principal) -> list[tuple[str, str]]:
        """(doc_id, title) of every document of the principal's tenant it may read (workflows match names
        from a request against them)."""

        def listed() -> list[tuple[str, str]]:
            tokens = principal.reader_tokens()
            documents = self.service.catalog.list_documents(tenant=principal.tenant, limit=TITLES_LIMIT)
            return [(d.doc_id, d.title) for d in documents if d.readable_by(principal.tenant, tokens)]

        return await run_blocking(listed)

    async def embed(self, texts: Sequence[str]) -> Matrix:
        """`texts` embedded by the active version's embedder (the query side's model), L2-normalised rows."""
        embedder = (await run_blocking(self.service.current)).embedder
        return await run_blocking(embedder.embed, list(texts))

    def close(self) -> None:
        self.service.close()
