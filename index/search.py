"""Hybrid search over one index version, and a service that follows the active alias.

    searcher = Searcher(settings, version, embedder, query_embedder=qe, reranker=rr)   # ModelMismatch?
    result = await searcher.search("how do I reset my password", principal, k=8, mode="hybrid")
    result = await searcher.search(query, principal, filters=SearchFilters(tags_any=("hr",)))
    result = searcher.search_sync(query, principal)                  # eval / bench, no event loop
    results = searcher.search_many_sync(queries, principal)          # one embedding call for all

    service = SearchService(settings)                               # follows <index_root>/active.json
    result = await service.search(query, principal)
    found = await service.read(doc_id, principal)                   # (title, text) or None

One query (`timings_ms` has a key per stage):
  embed   the query vector (QueryEmbedder's cached `aembed_query` when given, else the embedder);
  ann     USearch top `retrieve_k`      } one after the other, in one `run_blocking`; access control and
  bm25    Whoosh BM25 top `retrieve_k`  } the metadata filters are inside both retrievers (index.access)
  fuse    index.fusion: `fusion="zscore"` (the default) sums the standardised scores of the two lists with
          `weights` (dense settings.fusion_dense_weight, bm25 the rest); `fusion="rrf"` is weighted RRF
          (k = settings.rrf_k). Ranks in each list are kept as provenance;
  catalog the candidates' rows (text, title, heading), visibility and ACL checked once more;
  rerank  the cross-encoder over the top `rerank_depth`, when a reranker is given;
  total.
`mode="dense"` or `"bm25"` runs one retriever; a hit's score is then its cosine similarity or BM25
score, in hybrid mode the fused score (and `rerank_score` when reranked, which then decides the order).

A Searcher is bound to one (index version, embedder) pair and checks the manifest when it is built, so a
query never embeds with one model and searches another's vectors. The SearchService swaps the pair when
the alias changes; a query that started keeps the Searcher it started with.

Measured with the tests' 64-d hashing embedder, 2 shared cores, 120-word chunks, retrieve_k 100: at 5K
chunks hybrid p50 4.6 ms / p95 7.0 ms (ann 1.1, bm25 3.3); at 20K p50 9.6 / p95 12.5 (ann 1.7, bm25 7.6).
The first BM25 query per thread after a commit rebuilds the ACL masks (+20 ms at 20K chunks), and the
first query after any catalog commit rebuilds the access map (index.access).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, Protocol

import msgspec
import numpy as np
import numpy.typing as npt
import redis.asyncio as aredis

from index.access import AccessFilter, AccessMap
from index.entries import chunk_of
from index.fusion import Fused, dense_weighted, keep_lexical_top, lexical_top_stands_out, rrf, zscore
from index.keys import Scored, as_keys
from index.lexical import LexicalIndex
from index.lexical_feedback import feedback_weights
from index.sections import section_passages
from index.types import Embedder, Hit, Manifest, ModelIdentity, Principal, SearchResult, Vector
from index.vectors import GENERATION_CHECK_MS, VectorIndex
from index.versions import alias_path, check_model, get_active, read_manifest, version_path
from store.blocking import run_blocking, run_short
from store.catalog import Catalog
from store.catalog_types import ChunkRow
from store.exceptions import IndexNotFound, InputError, ModelError, ModelMismatch
from store.metadata import Filters
from store.settings import Settings

Mode = Literal["hybrid", "dense", "bm25"]
Fusion = Literal["zscore", "rrf"]
FUSIONS: tuple[Fusion, ...] = ("zscore", "rrf")
MODES: tuple[Mode, ...] = ("hybrid", "dense", "bm25")
ALIAS_CHECK_MS = 500
RETIRE_GRACE_S = 30.0  # a replaced Searcher is closed this long after the switch (in-flight queries end)


class QueryVectors(Protocol):
    """The hot-path query embedder (index.embed.QueryEmbedder): cached, async."""

    @property
    def identity(self) -> ModelIdentity: ...

    async def aembed_query(self, text: str) -> Vector: ...


class Reranker(Protocol):
    """index.rerank.CrossEncoderReranker: a relevance score per passage, higher is better."""

    def score(self, query: str, passages: Sequence[str]) -> npt.NDArray[np.float32]: ...


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


class Searcher:
    """Search over one index version with one embedder (and optionally a query embedder and reranker)."""

    def __init__(
        self,
        settings: Settings,
        version: str,
        embedder: Embedder,
        *,
        query_embedder: QueryVectors | None = None,
        reranker: Reranker | None = None,
        catalog: Catalog | None = None,
        weights: Mapping[str, float] | None = None,
        fusion: Fusion | None = None,
        check_interval_ms: int = GENERATION_CHECK_MS,
    ) -> None:
        fusion = settings.fusion if fusion is None else fusion
        if fusion not in FUSIONS:
            raise InputError(f"fusion must be one of {', '.join(FUSIONS)}", field="fusion")
        self.settings = settings
        self.manifest: Manifest = read_manifest(settings, version)
        check_model(self.manifest, embedder.identity)
        if query_embedder is not None:
            check_model(self.manifest, query_embedder.identity)
        self.embedder = embedder
        self.query_embedder = query_embedder
        self.reranker = reranker
        self.weights = dense_weighted(settings.fusion_dense_weight) if weights is None else dict(weights)
        self.fusion: Fusion = fusion
        self._owns_catalog = catalog is None
        self.catalog = catalog or Catalog.for_data_dir(settings.data_path)
        self.access = AccessMap(self.catalog, version)
        directory = version_path(settings, version)
        self.vectors = VectorIndex.open_reader(
            directory,
            ndim=self.manifest.model.dimension,
            dtype=self.manifest.vector_dtype,
            check_interval_ms=check_interval_ms,
        )
        self.lexical = LexicalIndex.open(
            directory,
            k1=settings.bm25_k1,
            b=settings.bm25_b,
            doc_weight=settings.bm25_doc_weight,
            length_spread=settings.bm25_length_spread,
            check_interval_ms=check_interval_ms,
        )

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def fusion_name(self) -> str:
        weights = ", ".join(f"{name} {weight:g}" for name, weight in self.weights.items())
        if self.fusion == "rrf":
            return f"RRF (k={self.settings.rrf_k}; {weights})"
        return f"z-score ({weights})"

    def close(self) -> None:
        self.lexical.close()
        if self._owns_catalog:
            self.catalog.close()

    # -- the async hot path --------------------------------------------------------------------------

    async def search(
        self,
        query: str,
        principal: Principal,
        *,
        k: int | None = None,
        mode: Mode = "hybrid",
        filters: Filters = None,
    ) -> SearchResult:
        k = self._check(query, principal, k, mode)
        started = time.perf_counter()
        timings: dict[str, float] = {}
        vector = None
        if mode != "bm25":
            embed_started = time.perf_counter()
            vector = await self.embed_query(query)
            timings["embed"] = _ms(embed_started)
        # One blocking call for the rest: USearch beside Whoosh in a second thread was slower on 2 loaded
        # cores (100K chunks, 373 queries x 2 interleaved: p50 8.6 / p95 20.4 ms against 6.3 / 14.1 one
        # after the other): the stages share the GIL and every thread hand-off waits for a wake-up.
        began: list[float] = []  # when the blocking part started (after the wait for a thread)

        def retrieve() -> list[Hit]:
            began.append(time.perf_counter())
            return self._retrieve(query, vector, principal, k, mode, timings, filters)

        hits = await run_short(retrieve)  # in this thread when its loop runs one job (store.blocking)
        timings["total"] = _ms(started)
        first = "ann" if "ann" in timings else "bm25"
        starts = {first: round((began[0] - started) * 1000, 3)}
        return SearchResult(
            query=query, index_version=self.version, hits=hits, timings_ms=timings, stage_starts_ms=starts
        )

    async def embed_query(self, query: str) -> Vector:
        """The query's vector exactly as `search` embeds it (the query embedder's cache: computed once)."""
        if self.query_embedder is not None:
            return await self.query_embedder.aembed_query(query)
        return (await run_blocking(self.embedder.embed, [query]))[0]

    # -- synchronous variants (evaluation, benchmarks) ----------------------------------------------

    def search_sync(
        self,
        query: str,
        principal: Principal,
        *,
        k: int | None = None,
        mode: Mode = "hybrid",
        filters: Filters = None,
    ) -> SearchResult:
        """`search` without an event loop: the same stages, one after the other, in this thread."""
        k = self._check(query, principal, k, mode)
        started = time.perf_counter()
        timings: dict[str, float] = {}
        vector = None
        if mode != "bm25":
            embed_started = time.perf_counter()
            vector = self.embedder.embed([query])[0]
            timings["embed"] = _ms(embed_started)
        hits = self._retrieve(query, vector, principal, k, mode, timings, filters)
        timings["total"] = _ms(started)
        return SearchResult(query=query, index_version=self.version, hits=hits, timings_ms=timings)

    def search_many_sync(
        self, queries: Sequence[str], principal: Principal, *, k: int | None = None, mode: Mode = "hybrid"
    ) -> list[SearchResult]:
        """Many queries: one embedding call for all of them, then each query's retrieval and fusion."""
        checked = [self._check(q, principal, k, mode) for q in queries]
        vectors: list[Vector | None] = [None] * len(queries)
        embed_ms = 0.0
        if mode != "bm25" and queries:
            embed_started = time.perf_counter()
            vectors = list(self.embedder.embed(list(queries)))
            embed_ms = _ms(embed_started) / len(queries)
        results = []
        for query, vector, k_checked in zip(queries, vectors, checked, strict=True):
            timings = {"embed": embed_ms} if vector is not None else {}
            started = time.perf_counter()
            hits = self._retrieve(query, vector, principal, k_checked, mode, timings)
            timings["total"] = round(_ms(started) + embed_ms, 3)
            results.append(
                SearchResult(query=query, index_version=self.version, hits=hits, timings_ms=timings)
            )
        return results

    def _retrieve(
        self,
        query: str,
        vector: Vector | None,
        principal: Principal,
        k: int,
        mode: Mode,
        timings: dict[str, float],
        filters: Filters = None,
    ) -> list[Hit]:
        allowed = AccessFilter(self.catalog, self.version, principal, filters, access=self.access)
        dense = self._dense(vector, allowed, timings) if vector is not None else []
        lexical = self._bm25(query, principal, allowed, timings) if mode != "dense" else []
        return self._finish(query, principal, dense, lexical, mode, k, timings, allowed)

    # -- stages (blocking) ----------------------------------------------------------------------------

    def _check(self, query: str, principal: Principal, k: int | None, mode: str) -> int:
        if not isinstance(query, str) or not query.strip():
            raise InputError("empty query", field="query")
        if len(query) > self.settings.max_question_chars:
            raise InputError(
                f"a query is at most {self.settings.max_question_chars} characters", field="query"
            )
        if not isinstance(principal, Principal):
            raise InputError("a principal is required", field="principal")
        if mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}", field="mode")
        k = self.settings.top_k if k is None else k
        if not isinstance(k, int) or not 1 <= k <= self.settings.retrieve_k:
            raise InputError(f"k must be 1..{self.settings.retrieve_k}", field="k")
        return k

    def _dense(self, vector: Vector, allowed: AccessFilter, timings: dict[str, float]) -> list[Scored]:
        started = time.perf_counter()
        found = self.vectors.search(vector, self.settings.retrieve_k, allowed)
        timings["ann"] = _ms(started)
        return found

    def _bm25(
        self, query: str, principal: Principal, allowed: AccessFilter, timings: dict[str, float]
    ) -> list[Scored]:
        started = time.perf_counter()
        found = self.lexical.search(
            query,
            self.settings.retrieve_k,
            tenant=principal.tenant,
            reader_tokens=principal.reader_tokens(),
            allowed=allowed,
        )
        if self.settings.bm25_prf_docs and found:
            found = self._bm25_feedback(query, principal, allowed, found)
        timings["bm25"] = _ms(started)
        return found

    def _bm25_feedback(
        self, query: str, principal: Principal, allowed: AccessFilter, first: list[Scored]
    ) -> list[Scored]:
        """BM25 again with the query expanded from the first pass's top chunks (index.lexical_feedback)."""
        top = first[: self.settings.bm25_prf_docs]
        rows = self.catalog.chunk_rows(self.version, [key for key, _ in top])
        texts = {key: chunk_of(row).indexed_text() for key, row in rows.items()}
        weights = feedback_weights(
            self.lexical.analyse, self.lexical.tokens, query, top, texts,
            terms=self.settings.bm25_prf_terms, original=self.settings.bm25_prf_original,
        )  # fmt: skip
        return self.lexical.search(
            query, self.settings.retrieve_k, tenant=principal.tenant,
            reader_tokens=principal.reader_tokens(), allowed=allowed, weights=weights,
        )  # fmt: skip

    def _finish(
        self,
        query: str,
        principal: Principal,
        dense: list[Scored],
        lexical: list[Scored],
        mode: Mode,
        k: int,
        timings: dict[str, float],
        allowed: AccessFilter,
    ) -> list[Hit]:
        started = time.perf_counter()
        depth = max(k, self.settings.rerank_depth) if self.reranker is not None else k
        spare = depth + k  # a few spare: a row may have been hidden since retrieval
        fused = self._fuse(dense, lexical, mode, spare)
        if mode == "hybrid" and lexical_top_stands_out(lexical):  # else keep_lexical_top changes nothing
            if all(f.key != lexical[0][0] for f in fused):
                fused = self._fuse(dense, lexical, mode, None)  # rare: the anchor is below the cut
            fused = keep_lexical_top(fused, lexical, k)
        timings["fuse"] = _ms(started)
        started = time.perf_counter()
        candidates = fused[:spare]
        rows = self.catalog.chunk_rows(self.version, [f.key for f in candidates])
        tokens = principal.reader_tokens()
        passed = allowed(as_keys([f.key for f in candidates])).tolist() if candidates else []
        readable = [
            (f, rows[f.key])
            for f, ok in zip(candidates, passed, strict=True)
            if ok and f.key in rows and rows[f.key].readable_by(principal.tenant, tokens)
        ][:depth]
        timings["catalog"] = _ms(started)
        rerank_scores: list[float | None] = [None] * len(readable)
        if self.reranker is not None and readable:
            started = time.perf_counter()
            passages = [chunk_of(row).indexed_text() for _, row in readable]
            scores = np.asarray(self.reranker.score(query, passages), dtype=np.float32)
            order = np.argsort(-scores, kind="stable")
            readable = [readable[i] for i in order]
            rerank_scores = [float(scores[i]) for i in order]
            timings["rerank"] = _ms(started)
        return [_hit(f, row, rerank) for (f, row), rerank in zip(readable, rerank_scores, strict=True)][:k]

    def _fuse(self, dense: list[Scored], lexical: list[Scored], mode: Mode, limit: int | None) -> list[Fused]:
        """The first `limit` (None: all) of the fused list (one retriever's list in dense/bm25 mode)."""
        if mode == "hybrid":
            lists = {"dense": dense, "bm25": lexical}
            if self.fusion == "rrf":
                ranked = {name: [key for key, _ in scored] for name, scored in lists.items()}
                return rrf(ranked, k=self.settings.rrf_k, weights=self.weights, limit=limit)
            return zscore(lists, weights=self.weights, limit=limit)
        name, scored = ("dense", dense) if mode == "dense" else ("bm25", lexical)
        return [
            Fused(key=key, score=score, ranks={name: rank})
            for rank, (key, score) in enumerate(scored[:limit], 1)
        ]


def _hit(fused: Fused, row: ChunkRow, rerank_score: float | None) -> Hit:
    return Hit(
        chunk_id=row.chunk_id,
        doc_id=row.doc_id,
        title=row.title,
        heading=row.heading,
        text=row.text,
        score=fused.score,
        dense_rank=fused.ranks.get("dense"),
        bm25_rank=fused.ranks.get("bm25"),
        rerank_score=rerank_score,
    )


# -- the service ---------------------------------------------------------------------------------------

OpenSearcher = Callable[[Manifest], Searcher]


class SearchService:
    """Search against whatever version the active alias names, with the embedder that built it.

    `open_searcher(manifest)` builds the Searcher for a newly active version (default: the registered
    embedder whose identity matches the manifest, a cached QueryEmbedder, the configured reranker).
    The alias file is stat-ed at most every `check_interval_ms`.
    """

    def __init__(
        self,
        settings: Settings,
        open_searcher: OpenSearcher | None = None,
        *,
        catalog: Catalog | None = None,
        async_redis: aredis.Redis | None = None,
        check_interval_ms: int = ALIAS_CHECK_MS,
    ) -> None:
        self.settings = settings
        self._owns_catalog = catalog is None
        self.catalog = catalog or Catalog.for_data_dir(settings.data_path)
        self._async_redis = async_redis
        self._open = open_searcher or self._open_default
        self.check_interval_ms = check_interval_ms
        self._current: Searcher | None = None
        self._alias_stat: tuple[int, int] | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()
        self._retired: list[tuple[float, Searcher]] = []

    def _fresh(self) -> Searcher | None:
        current = self._current
        if current is not None and (time.monotonic() - self._checked_at) * 1000 < self.check_interval_ms:
            return current
        return None

    def current(self) -> Searcher:
        """The Searcher of the active version (blocking: a switch may load a model)."""
        fresh = self._fresh()
        if fresh is not None:
            return fresh
        with self._lock:
            try:
                st = os.stat(alias_path(self.settings))
                stat: tuple[int, int] | None = (st.st_ino, st.st_mtime_ns)
            except FileNotFoundError:
                stat = None
            if self._current is None or stat != self._alias_stat:
                version = get_active(self.settings)
                if version is None:
                    raise IndexNotFound("no active index version: ingest documents first")
                if self._current is None or self._current.version != version:
                    searcher = self._open(read_manifest(self.settings, version))
                    if self._current is not None:
                        self._retired.append((time.monotonic(), self._current))
                    self._current = searcher
                self._alias_stat = stat
            self._checked_at = time.monotonic()
            self._close_retired()
            return self._current

    def _close_retired(self, *, grace_s: float = RETIRE_GRACE_S) -> None:
        keep = []
        for retired_at, searcher in self._retired:
            if time.monotonic() - retired_at >= grace_s:
                searcher.close()
            else:
                keep.append((retired_at, searcher))
        self._retired = keep

    async def searcher(self) -> Searcher:
        fresh = self._fresh()
        return fresh if fresh is not None else await run_blocking(self.current)

    async def search(
        self,
        query: str,
        principal: Principal,
        *,
        k: int | None = None,
        mode: Mode = "hybrid",
        filters: Filters = None,
    ) -> SearchResult:
        searcher = await self.searcher()  # this query stays on this (version, embedder) pair
        return await searcher.search(query, principal, k=k, mode=mode, filters=filters)

    def search_sync(
        self,
        query: str,
        principal: Principal,
        *,
        k: int | None = None,
        mode: Mode = "hybrid",
        filters: Filters = None,
    ) -> SearchResult:
        return self.current().search_sync(query, principal, k=k, mode=mode, filters=filters)

    async def sections(self, result: SearchResult, principal: Principal) -> SearchResult:
        """The result with each hit widened to its section (settings.context_window_tokens; 0: as it is)."""
        budget = self.settings.context_window_tokens
        if budget <= 0 or not result.hits:
            return result
        count = (await self.searcher()).embedder.count_tokens
        hits = await run_short(
            section_passages, self.catalog, result.index_version, result.hits, principal,
            max_tokens=budget, count_tokens=count,
        )  # fmt: skip
        return msgspec.structs.replace(result, hits=hits)

    async def read(self, doc_id: str, principal: Principal) -> tuple[str, str] | None:
        """(title, text) of a document the principal may read; None when absent, deleted or forbidden."""
        return await run_blocking(self.read_sync, doc_id, principal)

    def read_sync(self, doc_id: str, principal: Principal) -> tuple[str, str] | None:
        document = self.catalog.get_document(doc_id)
        if document is None or not document.readable_by(principal.tenant, principal.reader_tokens()):
            return None
        text = self.catalog.document_text(doc_id)
        return None if text is None else (document.title, text)

    def close(self) -> None:
        with self._lock:
            self._close_retired(grace_s=0.0)
            if self._current is not None:
                self._current.close()
                self._current = None
        if self._owns_catalog:
            self.catalog.close()

    def _open_default(self, manifest: Manifest) -> Searcher:
        from index.embed import EMBEDDER_NAMES, QueryEmbedder, load_embedder
        from index.rerank import load_reranker

        candidates = dict.fromkeys((self.settings.embed_model, *EMBEDDER_NAMES))
        for name in candidates:
            try:
                embedder = load_embedder(self.settings, name, purpose="online")
            except ModelError:
                continue  # not installed here: it cannot be the one anyway
            if embedder.identity == manifest.model:
                query_embedder = QueryEmbedder(
                    embedder, cache_size=self.settings.embed_cache_size, async_redis=self._async_redis
                )
                return Searcher(
                    self.settings,
                    manifest.version,
                    embedder,
                    query_embedder=query_embedder,
                    reranker=load_reranker(self.settings),
                    catalog=self.catalog,
                )
        raise ModelMismatch(
            f"no registered embedder matches index {manifest.version} (built with {manifest.model.name})",
            version=manifest.version,
        )
