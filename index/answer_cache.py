"""The semantic answer cache: a Q&A answer reused for a close enough question, never stale, never leaked.

    cache = AnswerCache(settings, service, AnswerStore.from_url(url))
    found = await cache.lookup(question, principal, threshold=0.9)   # Lookup: the hit, or why not
    await cache.store_answer(question, principal, index_version, chunk_ids, answer)   # a fresh answer

A lookup embeds the question with the active version's query embedder (cached: the retrieval that follows
a miss reuses the same vector, it is never embedded twice), takes the tenant's entries whose question
vector has a cosine >= the threshold, best first, and serves the first that is still safe:
  - same tenant (keys are per tenant) and same index version (a cutover leaves old entries unserved);
  - not expired (entries carry their TTL);
  - the exactness guard passes (index.exactness, unless DOCENT_ANSWER_CACHE_GUARD=false);
  - every chunk the answer was built from is visible in the active version and readable by this principal
    now (the catalog, checked at hit time: a chunk edited away, deleted or re-permissioned fails it).
Before that it applies the catalog's change journal (`Catalog.chunk_changes_after`): every chunk hidden or
re-permissioned since the last lookup (by ingest, sync, delete, a readers change, reindex) drops the
entries built from it through the reverse index (store.answer_cache). The hit-time check and the journal
are independent: either alone keeps a changed chunk's answer from being served.

The tenant's vectors are held in memory (one float32 matrix per tenant) and reloaded when the tenant's
generation counter changes, so a lookup is one Redis GET, a matrix product and a few reads of the winner.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Literal

import msgspec
import numpy as np

from index.exactness import same_question
from index.search import SearchService
from index.types import Principal, Vector
from store.answer_cache import AnswerRecord, AnswerStore
from store.blocking import run_blocking
from store.clock import now_ms
from store.events import AnswerCompleted
from store.settings import Settings

MAX_CANDIDATES = 5  # entries above the threshold examined per lookup, best first
JOURNAL_BATCH = 500

Outcome = Literal["hit", "miss", "refused_guard", "refused_access", "stale"]


class Lookup(msgspec.Struct, frozen=True, kw_only=True):
    outcome: Outcome
    record: AnswerRecord | None = None
    similarity: float = 0.0  # of the best candidate (the hit, or the closest refused one)
    reason: str = ""
    latency_ms: float = 0.0


class _Matrix(msgspec.Struct, kw_only=True):
    generation: int
    ids: list[str]
    vectors: np.ndarray  # (n, dim) float32, L2-normalised rows


def entry_id(tenant: str, index_version: str, question: str) -> str:
    """One entry per (tenant, version, question): asking the same question again replaces it."""
    canonical = " ".join(question.lower().split())
    return hashlib.sha256(f"{tenant}\x00{index_version}\x00{canonical}".encode()).hexdigest()[:32]


class AnswerCache:
    def __init__(self, settings: Settings, service: SearchService, store: AnswerStore) -> None:
        self.settings = settings
        self.service = service
        self.store = store
        self._matrices: dict[str, _Matrix] = {}
        self._lock = threading.Lock()

    # -- lookup -------------------------------------------------------------------------------------

    async def lookup(self, question: str, principal: Principal, *, threshold: float) -> Lookup:
        started = time.perf_counter()
        searcher = await self.service.searcher()
        vector = await searcher.embed_query(question)
        found = await run_blocking(self.lookup_sync, question, vector, principal, searcher.version, threshold)
        return msgspec.structs.replace(found, latency_ms=round((time.perf_counter() - started) * 1000, 3))

    def lookup_sync(
        self, question: str, vector: Vector, principal: Principal, version: str, threshold: float
    ) -> Lookup:
        self.apply_changes()
        tenant = principal.tenant
        matrix = self._matrix(tenant, len(vector))
        if not matrix.ids:
            return Lookup(outcome="miss", reason="no entries")
        scores = matrix.vectors @ np.asarray(vector, dtype=np.float32)
        order = np.argsort(-scores)[:MAX_CANDIDATES]
        refused: Lookup | None = None
        for i in order:
            similarity = float(scores[i])
            if similarity < threshold:
                break
            verdict = self._check(matrix.ids[i], question, principal, version, similarity)
            if verdict.outcome == "hit":
                self.store.touch(tenant, matrix.ids[i], now_ms())
                return verdict
            refused = refused or verdict
        if refused is not None:
            return refused
        best = float(scores[order[0]])
        return Lookup(outcome="miss", similarity=round(best, 4), reason=f"closest {best:.3f} < {threshold}")

    def _check(
        self, eid: str, question: str, principal: Principal, version: str, similarity: float
    ) -> Lookup:
        record = self.store.get(principal.tenant, eid)
        sim = round(similarity, 4)
        if record is None or record.expires_ms <= now_ms() or record.index_version != version:
            why = "expired" if record is None or record.expires_ms <= now_ms() else "another index version"
            self.store.remove(principal.tenant, [eid])
            return Lookup(outcome="stale", similarity=sim, reason=why)
        if self.settings.answer_cache_guard:
            verdict = same_question(question, record.question)
            if not verdict.ok:
                return Lookup(outcome="refused_guard", similarity=sim, reason=verdict.reason, record=None)
        if not self._readable(record, principal, version):
            return Lookup(outcome="refused_access", similarity=sim, reason="a source is not readable (now)")
        return Lookup(outcome="hit", record=record, similarity=sim)

    def _readable(self, record: AnswerRecord, principal: Principal, version: str) -> bool:
        """Every chunk of the entry visible in `version` and readable by `principal`, now."""
        rows = self.service.catalog.visible_by_chunk_id(version, record.chunk_ids)
        tokens = principal.reader_tokens()
        return all(c in rows and rows[c].readable_by(principal.tenant, tokens) for c in record.chunk_ids)

    def _matrix(self, tenant: str, dim: int) -> _Matrix:
        generation = self.store.generation(tenant)
        with self._lock:
            held = self._matrices.get(tenant)
            if held is not None and held.generation == generation and held.vectors.shape[1] == dim:
                return held
        generation, raw = self.store.vectors(tenant)
        ids = [i for i, v in raw.items() if len(v) == dim * 4]  # another model's vectors never match
        vectors = np.frombuffer(b"".join(raw[i] for i in ids), dtype=np.float32).reshape(len(ids), dim)
        matrix = _Matrix(generation=generation, ids=ids, vectors=vectors)
        with self._lock:
            self._matrices[tenant] = matrix
        return matrix

    # -- freshness ----------------------------------------------------------------------------------

    def apply_changes(self) -> int:
        """Drop the entries of every chunk the catalog journal names since the last call; returns how many."""
        removed = 0
        cursor = self.store.cursor()
        if cursor > self.service.catalog.last_change_seq():  # a new catalog: its journal starts again
            self.store.reset_cursor()
            cursor = 0
        while changes := self.service.catalog.chunk_changes_after(cursor, JOURNAL_BATCH):
            by_tenant: dict[str, list[str]] = {}
            for change in changes:
                by_tenant.setdefault(change.tenant, []).append(change.chunk_id)
            for tenant, chunk_ids in by_tenant.items():
                removed += self.store.invalidate_chunks(tenant, chunk_ids)
            cursor = self.store.advance_cursor(changes[-1].seq)
            if len(changes) < JOURNAL_BATCH:
                break
        return removed

    # -- store --------------------------------------------------------------------------------------

    async def store_answer(
        self, question: str, principal: Principal, index_version: str, chunk_ids: tuple[str, ...],
        answer: AnswerCompleted,
    ) -> bool:  # fmt: skip
        """Cache an answered turn (its question vector is the one retrieval used: an LRU hit)."""
        if not chunk_ids or not answer.text.strip():
            return False
        searcher = await self.service.searcher()
        if searcher.version != index_version:
            return False  # a cutover happened during the turn
        vector = await searcher.embed_query(question)
        created = now_ms()
        record = AnswerRecord(
            entry_id=entry_id(principal.tenant, index_version, question), tenant=principal.tenant,
            question=question, index_version=index_version, chunk_ids=chunk_ids, created_ms=created,
            expires_ms=created + self.settings.answer_cache_ttl_s * 1000, text=answer.text,
            citations=answer.citations, sources=answer.sources, unsupported=answer.unsupported,
        )  # fmt: skip
        data = np.asarray(vector, dtype=np.float32).tobytes()
        await run_blocking(
            self.store.put, record, data, now_ms=created, ttl_ms=self.settings.answer_cache_ttl_s * 1000,
            max_entries=self.settings.answer_cache_max_entries,
        )  # fmt: skip
        return True

    def close(self) -> None:
        self.store.close()
