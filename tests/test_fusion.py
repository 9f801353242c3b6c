"""Fusion: z-score and weighted RRF, and the live Searcher fusing with them (the code `docent eval` runs)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from index.access import AccessFilter
from index.fusion import rrf, standardised, zscore
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


def test_standardised_scores_have_mean_zero_and_unit_spread() -> None:
    z = standardised([(1, 0.9), (2, 0.7), (3, 0.5), (1, 0.1)])  # a repeated key keeps its first score
    assert z == pytest.approx({1: 1.224744871, 2: 0.0, 3: -1.224744871})
    assert standardised([(7, 3.0)]) == {7: 0.0}  # no spread: everything at the mean
    assert standardised([]) == {}


def test_zscore_sums_weighted_standard_scores_and_a_missing_key_gets_the_lists_floor() -> None:
    dense = [(1, 0.9), (2, 0.8), (3, 0.1)]  # 1 and 2 close, 3 far behind
    bm25 = [(3, 30.0), (4, 5.0), (2, 4.0)]  # 3 far ahead
    fused = zscore({"dense": dense, "bm25": bm25}, weights={"dense": 0.6, "bm25": 0.4})
    zd, zb = standardised(dense), standardised(bm25)
    expected = {
        1: 0.6 * zd[1] + 0.4 * min(zb.values()),
        2: 0.6 * zd[2] + 0.4 * zb[2],
        3: 0.6 * zd[3] + 0.4 * zb[3],
        4: 0.6 * min(zd.values()) + 0.4 * zb[4],
    }
    assert {f.key: f.score for f in fused} == pytest.approx(expected)
    assert [f.key for f in fused] == sorted(expected, key=lambda key: -expected[key])
    assert next(f for f in fused if f.key == 2).ranks == {"dense": 2, "bm25": 3}
    only_dense = zscore({"dense": dense, "bm25": []})
    assert [f.key for f in only_dense] == [1, 2, 3]
    assert zscore({"dense": dense, "bm25": bm25}, limit=2)[1].key == fused[1].key
    with pytest.raises(InputError):
        zscore({"dense": dense}, weights={"dense": -0.1})


def test_zscore_ties_break_by_best_rank_then_key() -> None:
    fused = zscore(
        {"dense": [(5, 1.0), (6, 0.0)], "bm25": [(6, 1.0), (5, 0.0)]}, weights={"dense": 1, "bm25": 1}
    )
    assert [f.key for f in fused] == [5, 6]  # equal sums, equal best ranks: the smaller key first


def test_vocabulary_mismatch_keeps_the_dense_answer(searcher: Searcher) -> None:
    dense = searcher.search_sync(MISMATCHED_QUESTION, ALICE, k=3, mode="dense").hits
    bm25 = searcher.search_sync(MISMATCHED_QUESTION, ALICE, k=3, mode="bm25").hits
    assert dense[0].doc_id == "counter" and bm25[0].doc_id == "glossary"
    hybrid = searcher.search_sync(MISMATCHED_QUESTION, ALICE, k=3, mode="hybrid").hits
    assert hybrid[0].doc_id == "counter"
    assert any(h.doc_id == "glossary" and h.bm25_rank == 1 for h in hybrid)  # its ranks are kept


async def test_lexical_queries_agree_on_the_live_path(searcher: Searcher) -> None:
    query = "parental leave lasts sixteen weeks"
    result = await searcher.search(query, ALICE, k=3, mode="hybrid")
    top = result.hits[0]
    assert top.doc_id == "leave" and (top.dense_rank, top.bm25_rank) == (1, 1)
    assert {"embed", "ann", "bm25", "fuse", "catalog", "total"} == set(result.timings_ms)
    sync = searcher.search_sync(query, ALICE, k=3, mode="hybrid")
    assert [h.chunk_id for h in sync.hits] == [h.chunk_id for h in result.hits]
    assert searcher.fusion_name == "z-score (dense 0.6, bm25 0.4)"


@pytest.mark.parametrize("fusion", ["zscore", "rrf"])
def test_scores_follow_the_fusion_the_searcher_reports(searcher: Searcher, fusion: str) -> None:
    searcher.fusion = fusion  # type: ignore[assignment]
    for query in (MISMATCHED_QUESTION, "hotel costs cap", "economy flights glossary"):
        vector = searcher.embedder.embed([query])[0]
        timings: dict[str, float] = {}
        allowed = AccessFilter(searcher.catalog, searcher.version, ALICE)
        lists = {
            "dense": searcher._dense(vector, allowed, timings),
            "bm25": searcher._bm25(query, ALICE, allowed, timings),
        }
        if fusion == "rrf":
            ranked = {name: [key for key, _ in scored] for name, scored in lists.items()}
            expected = rrf(ranked, k=searcher.settings.rrf_k, weights=searcher.weights)
        else:
            expected = zscore(lists, weights=searcher.weights)
        hits = searcher.search_sync(query, ALICE, k=5, mode="hybrid").hits
        assert [h.score for h in hits] == pytest.approx([f.score for f in expected[: len(hits)]])


def test_unknown_fusion_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        Searcher(make_settings(tmp_path), "v1", BowEmbedder(), fusion="max")  # type: ignore[arg-type]
