"""`POST /api/search`: retrieval as the caller's principal (bearer token, as every REST route).

    {"query": "...", "k": 8, "mode": "hybrid" | "dense" | "bm25", "filters": {...}}
    -> {"query", "index_version", "hits": [{"n", "chunk_id", "doc_id", "title", "heading", "text", "score",
        "provenance": {"dense_rank", "bm25_rank", "rerank_score"}}], "timings_ms"}

`filters` (store.metadata.SearchFilters: doc_ids, source, source_prefix, path_prefix, author, tags_any,
tags_all, created/modified date ranges, fields) narrow the search inside retrieval like the ACL; an unknown
filter or a bad value is 400 `bad_filter` naming the field. `n` numbers the hits from 1, as citation
markers `[n]` do. The web process embeds nothing: a query worker
searches (`actors.search_rpc`), and the index layer applies the caller's ACL inside retrieval. Rate-limited
with the caller's asks (the same per-user and per-tenant buckets); the body is size-capped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from actors.search_rpc import SearchCall, SearchMode, make_search
from index.types import Hit, SearchResult
from server.auth import Principal
from server.bodies import read_json
from server.callers import principal, services
from server.rest import json_response
from store.exceptions import InputError
from store.metadata import parse_filters

MAX_K = 50
DEFAULT_K = 8

Search = Callable[[SearchCall], Awaitable[SearchResult]]


class SearchBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    query: Annotated[str, msgspec.Meta(min_length=1)]
    k: Annotated[int, msgspec.Meta(ge=1, le=MAX_K)] = DEFAULT_K
    mode: SearchMode = "hybrid"
    filters: dict[str, Any] | None = None  # decoded by store.metadata.parse_filters (bad_filter)


class Provenance(msgspec.Struct, frozen=True, kw_only=True):
    dense_rank: int | None
    bm25_rank: int | None
    rerank_score: float | None


class HitOut(msgspec.Struct, frozen=True, kw_only=True):
    n: int
    chunk_id: str
    doc_id: str
    title: str
    heading: str
    text: str
    score: float
    provenance: Provenance


class SearchOut(msgspec.Struct, frozen=True, kw_only=True):
    query: str
    index_version: str
    hits: list[HitOut]
    timings_ms: dict[str, float]


def hit_out(n: int, hit: Hit) -> HitOut:
    provenance = Provenance(dense_rank=hit.dense_rank, bm25_rank=hit.bm25_rank, rerank_score=hit.rerank_score)
    return HitOut(
        n=n, chunk_id=hit.chunk_id, doc_id=hit.doc_id, title=hit.title, heading=hit.heading, text=hit.text,
        score=hit.score, provenance=provenance,
    )  # fmt: skip


def search_of(request: Request) -> Search:
    """The search client, made once per app (tests may set `app.state.search`)."""
    state = request.app.state
    if getattr(state, "search", None) is None:
        state.search = make_search(services(request).settings, services(request).redis)
    return state.search  # type: ignore[no-any-return]


def call_of(body: SearchBody, me: Principal, max_chars: int) -> SearchCall:
    query = body.query.strip()
    if not query or len(body.query) > max_chars:
        raise InputError(f"query must be 1..{max_chars} characters", field="query")
    filters = parse_filters(body.filters)
    return SearchCall(query=query, k=body.k, mode=body.mode, tenant=me.tenant, user=me.user, groups=me.groups,
                      filters=None if filters.is_empty() else filters)  # fmt: skip


async def search(request: Request) -> Response:
    me = principal(request)
    settings = services(request).settings
    body = await read_json(request, SearchBody, settings.max_json_body_bytes)
    await services(request).limits.check(me, "ask")
    result = await search_of(request)(call_of(body, me, settings.max_question_chars))
    hits = [hit_out(n, hit) for n, hit in enumerate(result.hits, start=1)]
    return json_response(SearchOut(query=result.query, index_version=result.index_version, hits=hits,
                                   timings_ms=result.timings_ms))  # fmt: skip


def routes() -> list[Route]:
    return [Route("/api/search", search, methods=["POST"])]
