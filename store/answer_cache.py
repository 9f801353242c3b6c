"""The semantic answer cache's Redis storage: entries, their question vectors, the reverse index
chunk -> entries, LRU order and a per-tenant bound. Vectors are opaque bytes here (no numpy in store/);
the similarity search over them is `index.answer_cache`.

    store = AnswerStore.from_url(url)
    store.put(record, vector_bytes, ttl_ms=..., max_entries=...)   # evicts the least recently used
    store.vectors(tenant) -> (generation, {entry id: bytes})         # what a reader keeps in memory
    store.generation(tenant)                                         # changed: reload the vectors
    store.get(tenant, entry_id) -> AnswerRecord | None
    store.touch(tenant, entry_id, now_ms)                           # LRU order
    store.invalidate_chunks(tenant, chunk_ids)                      # every entry built from them
    store.remove(tenant, entry_ids)

Keys (all of one tenant share the hash tag `{tenant}`, so a Redis Cluster keeps a tenant in one slot):
`acache:{t}:e:<id>` (the record; expires with the entry's TTL), `acache:{t}:vecs`, `acache:{t}:lru`,
`acache:{t}:c:<chunk id>` (the reverse index), `acache:{t}:gen`; and `acache:cursor`, the last catalog
change (`store.catalog` journal) applied. Every change is one Lua script (answer_*.lua).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import redis

from store.events import Citation, TextSpan
from store.exceptions import InputError, Unavailable
from store.redis import sync_client
from store.scripts import Arg, Batch, Call, Eval, LuaScript, Plan, SyncRunner, key_part, lua

PUT = lua("answer_cache.lua", "answer_put.lua")
REMOVE = lua("answer_cache.lua", "answer_remove.lua")
CURSOR = lua("answer_cursor.lua")
CURSOR_KEY = "acache:cursor"
MAX_CHUNKS_PER_ENTRY = 200


def prefix(tenant: str) -> str:
    return f"acache:{{{key_part(tenant, 'tenant')}}}:"


def entry_key(tenant: str, entry_id: str) -> str:
    return f"{prefix(tenant)}e:{key_part(entry_id, 'entry_id')}"


class AnswerRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A cached answer: what was asked, what it was built from, and the answer as it was completed."""

    entry_id: str
    tenant: str
    question: str
    index_version: str
    chunk_ids: tuple[str, ...]  # every passage the model was given: a hit needs all of them readable
    created_ms: int
    expires_ms: int
    text: str
    citations: tuple[Citation, ...] = ()
    sources: tuple[Citation, ...] = ()
    unsupported: tuple[TextSpan, ...] = ()


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnswerRecord)


def _checked(record: AnswerRecord) -> AnswerRecord:
    key_part(record.entry_id, "entry_id")
    if not record.chunk_ids or len(record.chunk_ids) > MAX_CHUNKS_PER_ENTRY:
        raise InputError(f"an entry names 1..{MAX_CHUNKS_PER_ENTRY} chunks", field="chunk_ids")
    for chunk_id in record.chunk_ids:
        key_part(chunk_id, "chunk_id")
    return record


def put_plan(record: AnswerRecord, vector: bytes, *, now_ms: int, ttl_ms: int, max_entries: int) -> Plan[int]:
    _checked(record)
    p = prefix(record.tenant)
    chunks = " ".join(record.chunk_ids)
    record_bytes = _encoder.encode(record)
    args: list[Arg] = [p, record.entry_id, record_bytes, vector, chunks, now_ms, ttl_ms, max_entries]
    return int((yield Eval(PUT, [p + "vecs", p + "lru", p + "gen"], args)))


def remove_plan(tenant: str, kind: str, items: Sequence[str]) -> Plan[int]:
    p = prefix(tenant)
    if not items:
        return 0
    checked = [key_part(i, "chunk_id" if kind == "chunks" else "entry_id") for i in items]
    return int((yield Eval(REMOVE, [p + "gen"], [p, kind, *checked])))


class AnswerStore:
    """Synchronous (the conversation actor's threads); every failure of Redis is `Unavailable`."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.runner = SyncRunner(client, unavailable=Unavailable)

    @classmethod
    def from_url(cls, url: str) -> AnswerStore:
        return cls(sync_client(url))

    def put(self, record: AnswerRecord, vector: bytes, *, now_ms: int, ttl_ms: int, max_entries: int) -> int:
        """Store (or replace) an entry; returns how many least recently used entries made room for it."""
        plan = put_plan(record, vector, now_ms=now_ms, ttl_ms=ttl_ms, max_entries=max_entries)
        return self.runner.run(plan)

    def get(self, tenant: str, entry_id: str) -> AnswerRecord | None:
        key = entry_key(tenant, entry_id)
        raw = self.runner.run(_call(lambda r: r.hget(key, "rec")))
        return None if raw is None else _decoder.decode(raw)

    def generation(self, tenant: str) -> int:
        key = prefix(tenant) + "gen"
        return int(self.runner.run(_call(lambda r: r.get(key))) or 0)

    def vectors(self, tenant: str) -> tuple[int, dict[str, bytes]]:
        p = prefix(tenant)

        def read(pipe: Any) -> None:
            pipe.get(p + "gen")
            pipe.hgetall(p + "vecs")

        gen, vecs = self.runner.run(_batch(read))
        return int(gen or 0), {(k.decode() if isinstance(k, bytes) else k): v for k, v in vecs.items()}

    def touch(self, tenant: str, entry_id: str, now_ms: int) -> None:
        key = prefix(tenant) + "lru"
        self.runner.run(_call(lambda r: r.zadd(key, {entry_id: now_ms}, xx=True)))

    def size(self, tenant: str) -> int:
        key = prefix(tenant) + "lru"
        return int(self.runner.run(_call(lambda r: r.zcard(key))))

    def entries_of_chunk(self, tenant: str, chunk_id: str) -> set[str]:
        key = f"{prefix(tenant)}c:{key_part(chunk_id, 'chunk_id')}"
        members = self.runner.run(_call(lambda r: r.smembers(key)))
        return {m.decode() if isinstance(m, bytes) else m for m in members}

    def invalidate_chunks(self, tenant: str, chunk_ids: Sequence[str]) -> int:
        """Remove every entry built from any of `chunk_ids`; returns how many."""
        return self.runner.run(remove_plan(tenant, "chunks", list(dict.fromkeys(chunk_ids))))

    def remove(self, tenant: str, entry_ids: Sequence[str]) -> int:
        return self.runner.run(remove_plan(tenant, "ids", list(dict.fromkeys(entry_ids))))

    def cursor(self) -> int:
        return int(self.runner.run(_call(lambda r: r.get(CURSOR_KEY))) or 0)

    def advance_cursor(self, seq: int) -> int:
        return int(self.runner.run(_eval(CURSOR, [CURSOR_KEY], [seq])))

    def reset_cursor(self) -> None:
        """Start over: the cursor is ahead of a catalog's journal (the catalog was recreated)."""
        self.runner.run(_call(lambda r: r.delete(CURSOR_KEY)))

    def close(self) -> None:
        self.client.close()


def _call(fn: Callable[[Any], Any]) -> Plan[Any]:
    return (yield Call(fn))


def _batch(fn: Callable[[Any], None]) -> Plan[Any]:
    return (yield Batch(fn, transaction=True))


def _eval(script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> Plan[Any]:
    return (yield Eval(script, keys, args))
