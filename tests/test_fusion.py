"""Fusion: weighted RRF, the lexical gate, and the live Searcher fusing with the gate (same code as eval)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from index.fusion import GATE_HIGH, GATE_LOW, hybrid_weights, lexical_gate, rrf, term_coverage
from index.ingest import Ingestor
from index.search import Searcher
from index.types import Access, Principal
from store.exceptions import InputError
from store.settings import Settings
from tests.test_indexes import BowEmbedder, make_document, make_settings

ALICE = Principal(tenant="acme", user="alice")

# A toy "semantic" embedder: a strong topic component (keyword rules standing in for meaning) plus a weak
# bag of words. It knows that "tally" is about counting although the counting chunk never says "tally":
# the vocabulary-mismatch case where BM25 only matches incidental words.
TOPICS = {
    "counting": ("tally", "counter"),
    "glossary": ("glossary",),
    "leave": ("leave",),
    "travel": ("flights", "hotel"),
}
CORPUS = {
    "counter": ["Counter keeps the number of occurrences of every hashable element."],
    "glossary": ["How often each word appears on this page is noted in the glossary, word by word."],
    "leave": ["Parental leave lasts sixteen weeks at full pay.", "Sick leave needs a note after three days."],
    "travel": ["Book economy flights under six hours.", "Hotel costs are reimbursed up to a cap."],
}
MISMATCHED_QUESTION = "tally how often each word appears"


class TopicEmbedder(BowEmbedder):
    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        words = super().embed(texts)
        topics = np.zeros_like(words)
        for row, text in enumerate(texts):
            lowered = text.lower()
            for slot, keywords in enumerate(TOPICS.values()):
                if any(k in lowered for k in keywords):
                    topics[row, slot] = 3.0
        out = topics + 0.3 * words
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out.astype(np.float32)


@pytest.fixture
def searcher(tmp_path: Path) -> Searcher:
    settings: Settings = make_settings(tmp_path, retrieve_k=20)
    embedder = TopicEmbedder(salt="topic")
    with Ingestor(settings, embedder) as ingestor:
        for doc_id, texts in CORPUS.items():
            ingestor.ingest_chunks(*make_document(doc_id, texts, Access(tenant="acme"), title=doc_id.title()))
        version = ingestor.version
    searcher = Searcher(settings, version, embedder)
    yield searcher
    searcher.close()


def test_rrf_weights_scale_votes_and_zero_keeps_provenance() -> None:
    fused = rrf({"dense": [1, 2, 3], "bm25": [3, 2]}, k=60)
    assert [f.key for f in fused] == [3, 2, 1]  # 3: 1/63 + 1/61 edges out 2: 1/62 + 1/62
    assert fused[1].score == pytest.approx(2 / 62)
    silenced = rrf({"dense": [1, 2, 3], "bm25": [3, 2]}, k=60, weights={"dense": 1.0, "bm25": 0.0})
    assert [f.key for f in silenced] == [1, 2, 3]
    assert silenced[2].ranks == {"dense": 3, "bm25": 1}
    with pytest.raises(InputError):
        rrf({"dense": [1]}, weights={"dense": -1.0})


def test_gate_is_closed_below_low_open_above_high_and_linear_between() -> None:
    assert lexical_gate(0.0) == 0.0
    assert lexical_gate(GATE_LOW - 1e-9) == 0.0
    assert lexical_gate(GATE_HIGH) == 1.0 and lexical_gate(1.0) == 1.0
    middle = (GATE_LOW + GATE_HIGH) / 2
    assert lexical_gate(middle) == pytest.approx(0.5)
    assert lexical_gate(0.5, low=0.5, high=0.5) == 1.0
    with pytest.raises(InputError):
        lexical_gate(0.5, low=0.6, high=0.4)
    assert hybrid_weights(middle, {"dense": 2.0, "bm25": 0.8}) == pytest.approx({"dense": 2.0, "bm25": 0.4})
    assert hybrid_weights(1.0) == {"dense": 1.0, "bm25": 1.0}


def test_term_coverage_counts_distinct_query_terms() -> None:
    assert term_coverage(["tally", "word", "word", "appear"], ["word", "page"]) == pytest.approx(1 / 3)
    assert term_coverage([], ["word"]) == 0.0
    assert term_coverage(["a"], []) == 0.0


def test_vocabulary_mismatch_closes_the_gate_and_keeps_the_dense_answer(searcher: Searcher) -> None:
    dense = searcher.search_sync(MISMATCHED_QUESTION, ALICE, k=3, mode="dense").hits
    bm25 = searcher.search_sync(MISMATCHED_QUESTION, ALICE, k=3, mode="bm25").hits
    assert dense[0].doc_id == "counter" and bm25[0].doc_id == "glossary"
    hybrid = searcher.search_sync(MISMATCHED_QUESTION, ALICE, k=3, mode="hybrid").hits
    assert hybrid[0].doc_id == "counter"
    assert hybrid[0].score == pytest.approx(1 / 61)  # BM25 did not vote...
    assert any(h.doc_id == "glossary" and h.bm25_rank == 1 for h in hybrid)  # ...but its ranks are kept
    searcher.fusion = "rrf"  # plain equal-weight RRF lets the incidental lexical match win
    plain = searcher.search_sync(MISMATCHED_QUESTION, ALICE, k=3, mode="hybrid").hits
    assert plain[0].doc_id == "glossary"


async def test_lexical_queries_fuse_with_full_weight_on_the_live_path(searcher: Searcher) -> None:
    query = "parental leave lasts sixteen weeks"
    result = await searcher.search(query, ALICE, k=3, mode="hybrid")
    top = result.hits[0]
    assert top.doc_id == "leave" and (top.dense_rank, top.bm25_rank) == (1, 1)
    assert top.score == pytest.approx(2 / 61)  # the dense top chunk has every query term: full BM25 vote
    assert {"embed", "ann", "bm25", "fuse", "catalog", "total"} == set(result.timings_ms)
    sync = searcher.search_sync(query, ALICE, k=3, mode="hybrid")
    assert [h.chunk_id for h in sync.hits] == [h.chunk_id for h in result.hits]
    assert "gated" in searcher.fusion_name


def test_scores_follow_the_weights_the_searcher_reports(searcher: Searcher) -> None:
    for query in (MISMATCHED_QUESTION, "hotel costs cap", "economy flights glossary"):
        vector = searcher.embedder.embed([query])[0]
        timings: dict[str, float] = {}
        from index.search import AccessFilter

        allowed = AccessFilter(searcher.catalog, searcher.version, ALICE)
        dense = searcher._dense(vector, allowed, timings)
        lexical = searcher._bm25(query, ALICE, allowed, timings)
        weights = searcher.fusion_weights(query, dense, lexical)
        assert weights["dense"] == 1.0 and 0.0 <= weights["bm25"] <= 1.0
        for hit in searcher.search_sync(query, ALICE, k=5, mode="hybrid").hits:
            expected = sum(
                weights[name] / (searcher.settings.rrf_k + rank)
                for name, rank in (("dense", hit.dense_rank), ("bm25", hit.bm25_rank))
                if rank is not None
            )
            assert hit.score == pytest.approx(expected)


def test_unknown_fusion_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        Searcher(make_settings(tmp_path), "v1", BowEmbedder(), fusion="max")  # type: ignore[arg-type]
