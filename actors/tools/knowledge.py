"""Knowledge tools: search the knowledge base and read a document, as the asking principal.

Both go through a `KnowledgeBase` the agent loop supplies; it checks access, so a document the principal
may not read is simply "not found". What comes back is document text: it is fenced as data for the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import msgspec

from actors.tools.knowledge_base import KnowledgeBase
from actors.tools.registry import Tool, ToolArgs, ToolContext, ToolOutput, fence_data
from index.types import Hit
from store.exceptions import ToolError
from store.metadata import SearchFilters
from store.tool_payloads import DocumentRead, SearchHit, SearchResults

MAX_SEARCH_K = 10
MAX_QUERY_CHARS = 1000
MAX_DOC_ID_CHARS = 200
MAX_READ_CHARS = 50_000
DEFAULT_READ_CHARS = 8_000
HIT_SNIPPET_CHARS = 700
PAYLOAD_SNIPPET_CHARS = 240  # what a client shows under a citation

DocId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_DOC_ID_CHARS, pattern=r"^[^\x00-\x1f]+$")]


class SearchArgs(ToolArgs, frozen=True):
    query: Annotated[
        str, msgspec.Meta(min_length=1, max_length=MAX_QUERY_CHARS, description="what to look for")
    ]
    k: Annotated[int, msgspec.Meta(ge=1, le=MAX_SEARCH_K, description="how many passages")] = 5
    filters: Annotated[
        SearchFilters | None,
        msgspec.Meta(description="only documents matching these (author, tags_any, path_prefix, dates …)"),
    ] = None


class ReadArgs(ToolArgs, frozen=True):
    doc_id: Annotated[DocId, msgspec.Meta(description="a doc_id from search results")]
    max_chars: Annotated[int, msgspec.Meta(ge=100, le=MAX_READ_CHARS)] = DEFAULT_READ_CHARS


def knowledge_of(ctx: ToolContext) -> KnowledgeBase:
    if ctx.knowledge is None:
        raise ToolError("no knowledge base is available to this run")
    return ctx.knowledge


def _trim(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit].rstrip() + " …"


def render_hits(query: str, hits: Sequence[Hit]) -> str:
    if not hits:
        return f"No passages you may read match {query!r}."
    blocks = []
    for n, hit in enumerate(hits, 1):
        where = f"{hit.title} > {hit.heading}" if hit.heading else hit.title
        head = f"[{n}] chunk_id={hit.chunk_id} doc_id={hit.doc_id} ({where})"
        blocks.append(f"{head}\n{_trim(hit.text, HIT_SNIPPET_CHARS)}")
    return fence_data(f"search_knowledge_base results for {query!r}", "\n\n".join(blocks))


async def search_knowledge_base(args: SearchArgs, ctx: ToolContext) -> ToolOutput:
    filters = tuple(f for f in (ctx.filters, args.filters) if f is not None)  # the ask's AND the call's
    hits = list(await knowledge_of(ctx).search(args.query, ctx.principal, args.k, filters))[: args.k]
    data = SearchResults(query=args.query, hits=tuple(search_hit(n, h) for n, h in enumerate(hits, 1)))
    return ToolOutput(text=render_hits(args.query, hits), data=data)


def search_hit(n: int, hit: Hit) -> SearchHit:
    """Hit `n` as the payload records it: numbered as `render_hits` shows it to the model."""
    snippet = " ".join(hit.text.split())[:PAYLOAD_SNIPPET_CHARS]
    return SearchHit(n=n, chunk_id=hit.chunk_id, doc_id=hit.doc_id, title=hit.title, heading=hit.heading,
                     score=float(hit.score), snippet=snippet)  # fmt: skip


async def read_document(args: ReadArgs, ctx: ToolContext) -> ToolOutput:
    found = await knowledge_of(ctx).read(args.doc_id, ctx.principal)
    if found is None:
        raise ToolError(f"document not found: {args.doc_id}", doc_id=args.doc_id)
    title, text = found
    shown = text[: args.max_chars]
    note = f"\n[truncated: {len(shown)} of {len(text)} characters shown]" if len(shown) < len(text) else ""
    body = fence_data(f"read_document doc_id={args.doc_id} title={title!r}", shown) + note
    data = DocumentRead(doc_id=args.doc_id, title=title, chars=len(text), truncated=bool(note))
    return ToolOutput(text=body, data=data)


SEARCH_TOOL: Tool[SearchArgs] = Tool(
    name="search_knowledge_base",
    description="Search the internal knowledge base. Returns passages with chunk and document ids.",
    args_type=SearchArgs,
    run=search_knowledge_base,
    needs_knowledge_base=True,
)

READ_TOOL: Tool[ReadArgs] = Tool(
    name="read_document",
    description="Read the text of one document by its doc_id (from search results).",
    args_type=ReadArgs,
    run=read_document,
    needs_knowledge_base=True,
)
