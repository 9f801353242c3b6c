"""The hybrid search's per-query overhead cut changes no result: `Searcher._finish` checks whether BM25's best
hit stands out once (`keep_lexical_top` changes nothing otherwise) and gives the very hits, scores and ranks
the fusion functions give when applied as before (the check, the rare full fusion, then keep_lexical_top)."""

from __future__ import annotations

from pathlib import Path

from index.access import AccessFilter
from index.fusion import keep_lexical_top, lexical_top_stands_out
from index.ingest import Ingestor
from index.search import Searcher
from index.types import Access
from tests.test_indexes import BowEmbedder, make_document, make_settings
from tests.test_search import ALICE, CORPUS

FILLER_DOCS = 40
K = 3
QUERIES = (
    "how many weeks of parental leave",
    "leave policy zebra crossing",  # one chunk has the rare word: BM25's best stands out
    "phishing emails",
    "hotel cap for flights",
    "leave leave notes",
)


def _searcher(tmp_path: Path) -> Searcher:
    settings = make_settings(tmp_path, retrieve_k=60)
    embedder = BowEmbedder()
    filler = {
        f"memo{n}": [f"Memo {n} about leave, travel and notes for team {n % 7}."] for n in range(FILLER_DOCS)
    }
    documents = {**CORPUS, **filler, "zebra": ["The zebra crossing leave policy for road safety days."]}
    with Ingestor(settings, embedder) as ingestor:
        for doc_id, texts in documents.items():
            ingestor.ingest_chunks(*make_document(doc_id, texts, Access(tenant="acme"), title=doc_id.title()))
        version = ingestor.version
    return Searcher(settings, version, embedder)


def _as_before(searcher: Searcher, query: str) -> tuple[list[tuple[float, int | None, int | None]], bool]:
    """The fused top K as `_finish` computed it before the change (every chunk is readable here), and
    whether BM25's best stood out."""
    timings: dict[str, float] = {}
    allowed = AccessFilter(searcher.catalog, searcher.version, ALICE, None, access=searcher.access)
    dense = searcher._dense(searcher.embedder.embed([query])[0], allowed, timings)
    lexical = searcher._bm25(query, ALICE, allowed, timings)
    fused = searcher._fuse(dense, lexical, "hybrid", 2 * K)
    if lexical_top_stands_out(lexical) and all(f.key != lexical[0][0] for f in fused):
        fused = searcher._fuse(dense, lexical, "hybrid", None)
    fused = keep_lexical_top(fused, lexical, K)
    return [(f.score, f.ranks.get("dense"), f.ranks.get("bm25")) for f in fused[:K]], lexical_top_stands_out(
        lexical
    )


def test_the_hybrid_results_are_identical_to_the_fusion_applied_as_before(tmp_path: Path) -> None:
    searcher = _searcher(tmp_path)
    try:
        stood_out = 0
        for query in QUERIES:
            hits = searcher.search_sync(query, ALICE, k=K, mode="hybrid").hits
            before, stands_out = _as_before(searcher, query)
            assert [(h.score, h.dense_rank, h.bm25_rank) for h in hits] == before, query
            stood_out += stands_out
        assert 0 < stood_out < len(QUERIES)  # both paths ran
    finally:
        searcher.close()
