"""The web process's search: a request to a query worker and its reply, through Redis (no model here).

    search = make_search(settings, client)                  # in the web process
    result = await search(SearchCall(query=..., tenant=..., user=..., groups=...))   # SearchResult

The web process enqueues `search_request(request_id, call)` on the `conversation` queue (the workers that
hold the query embedder and the indexes) and waits with BLPOP on the reply list `search:reply:<request_id>`
(store.keys); the worker (`actors.search_job`) pushes `SearchReply` there, with a short expiry. A worker's
typed error comes back as the same error; no reply within SEARCH_TIMEOUT_S is `unavailable`. Nothing here
imports an actor module or an index.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import msgspec
import redis.asyncio as aredis

from actors.api import send
from actors.broker import CONVERSATION_QUEUE
from index.types import SearchResult
from store.blocking import run_blocking
from store.exceptions import DocentError, Unavailable, error_class
from store.keys import search_reply
from store.metadata import SearchFilters
from store.settings import Settings

SEARCH_ACTOR = "search_request"
REPLY_TTL_S = 60
SEARCH_TIMEOUT_S = 15.0

SearchMode = Literal["hybrid", "dense", "bm25"]


class SearchCall(msgspec.Struct, frozen=True, kw_only=True):
    query: str
    k: int
    mode: SearchMode
    tenant: str
    user: str
    groups: tuple[str, ...] = ()
    filters: SearchFilters | None = None  # store.metadata: narrows inside retrieval, never widens


class SearchReply(msgspec.Struct, frozen=True, kw_only=True):
    result: SearchResult | None = None
    error: dict[str, Any] | None = None  # DocentError.to_wire()


def raise_wire(error: dict[str, Any]) -> None:
    """The worker's typed error, raised here as the class of its code."""
    code = str(error.get("code", DocentError.code))
    raise error_class(code)(str(error.get("message", code)))


def make_search(settings: Settings, client: aredis.Redis) -> Callable[[SearchCall], Awaitable[SearchResult]]:
    async def search(call: SearchCall) -> SearchResult:
        request_id = uuid.uuid4().hex
        encoded = msgspec.json.encode(call).decode()
        await run_blocking(send, settings, CONVERSATION_QUEUE, SEARCH_ACTOR, request_id, encoded)
        popped: Any = await client.blpop([search_reply(request_id)], timeout=SEARCH_TIMEOUT_S)
        if popped is None:
            raise Unavailable(f"no search worker answered within {SEARCH_TIMEOUT_S:.0f} s")
        reply = msgspec.json.decode(popped[1], type=SearchReply)
        if reply.error is not None or reply.result is None:
            raise_wire(reply.error or {})
        assert reply.result is not None
        return reply.result

    return search
