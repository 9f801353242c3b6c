"""What an answer may cite: the passages the model was given, numbered as it saw them, as `Citation`s.

Built from typed data only: the Q&A route's retrieved hits, the agent's latest knowledge-base search as its
tool result recorded it (`SearchResults`). Never from text: a tool result's text quotes documents, and a
document line shaped like a search-result header must not be able to name a source.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from index.types import Hit
from store.events import Citation, ToolResult
from store.tool_payloads import SearchHit, SearchResults

SNIPPET_CHARS = 240


def snippet(text: str) -> str:
    """The text's first SNIPPET_CHARS, whitespace runs as one space. Normalised from a prefix when that
    gives enough (a normalised prefix is a prefix of the normalised whole), not from the whole chunk."""
    head = " ".join(text[: SNIPPET_CHARS * 2].split())
    if len(head) >= SNIPPET_CHARS:
        return head[:SNIPPET_CHARS]
    return " ".join(text.split())[:SNIPPET_CHARS]


def qa_sources(hits: Sequence[Hit]) -> list[Citation]:
    return [
        Citation(n=n, chunk_id=h.chunk_id, doc_id=h.doc_id, title=h.title, heading=h.heading,
                 snippet=snippet(h.text))
        for n, h in enumerate(hits, 1)
    ]  # fmt: skip


def _citation(hit: SearchHit) -> Citation:
    return Citation(n=hit.n, chunk_id=hit.chunk_id, doc_id=hit.doc_id, title=hit.title, heading=hit.heading,
                    snippet=hit.snippet)  # fmt: skip


def agent_sources(results: Iterable[ToolResult]) -> list[Citation]:
    """The hits of the turn's latest successful search (a result whose payload is `SearchResults`)."""
    searches = [r for r in results if r.error is None and isinstance(r.data, SearchResults)]
    if not searches:
        return []
    latest = max(searches, key=lambda r: (r.step, r.at_ms))
    assert isinstance(latest.data, SearchResults)
    return [_citation(hit) for hit in latest.data.hits]
