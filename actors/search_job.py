"""The query side of `POST /api/search`: `search_request(request_id, call)` on the `conversation` queue.

The worker searches as the call's principal with its process-wide `SearchService` (`actors.runtime`), and
pushes a `SearchReply` (the result, or the typed error) to the reply list the web process waits on
(`actors.search_rpc`). A reply nobody reads expires.
"""

from __future__ import annotations

import dramatiq
import msgspec
import redis

from actors.broker import CONVERSATION_QUEUE, setup_broker
from actors.search_rpc import REPLY_TTL_S, SEARCH_ACTOR, SearchCall, SearchReply
from store.exceptions import DocentError, IndexNotFound
from store.keys import search_reply

TIME_LIMIT_MS = 30_000

_clients: dict[str, redis.Redis] = {}


def _client(url: str) -> redis.Redis:
    if url not in _clients:
        _clients[url] = redis.Redis.from_url(url)
    return _clients[url]


def answer(call: SearchCall) -> SearchReply:
    from actors.runtime import runtime
    from index.types import Principal, SearchResult

    principal = Principal(tenant=call.tenant, user=call.user, groups=call.groups)
    try:
        service = runtime().knowledge().service
        result = service.search_sync(call.query, principal, k=call.k, mode=call.mode, filters=call.filters)
        return SearchReply(result=result)
    except IndexNotFound:
        return SearchReply(result=SearchResult(query=call.query, index_version="", hits=[]))
    except DocentError as exc:
        return SearchReply(error=exc.to_wire())


def search_request(request_id: str, call: str) -> None:
    from actors.runtime import runtime

    reply = answer(msgspec.json.decode(call, type=SearchCall))
    client = _client(runtime().settings.redis_url)
    key = search_reply(request_id)
    with client.pipeline() as pipe:
        pipe.rpush(key, msgspec.json.encode(reply))
        pipe.expire(key, REPLY_TTL_S)
        pipe.execute()


search_actor: dramatiq.Actor[[str, str], None] = dramatiq.Actor(
    search_request, broker=setup_broker(), actor_name=SEARCH_ACTOR, queue_name=CONVERSATION_QUEUE, priority=0,
    options={"max_retries": 0, "time_limit": TIME_LIMIT_MS},
)  # fmt: skip
