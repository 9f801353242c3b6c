"""RM3 pseudo-relevance feedback for BM25 (index.lexical_feedback) and weighted BM25 queries."""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import pytest

from index.ingest import Ingestor
from index.lexical import LexicalEntry, LexicalIndex
from index.lexical_feedback import rm3_weights
from index.search import Searcher
from index.types import Access, Principal
from store.exceptions import InputError
from tests.test_indexes import BowEmbedder, make_document, make_settings

BODIES = (
    "tape backup rotation schedule",
    "backup tapes kept offsite in the vault",
    "offsite vault access badge",
    "laptop password rotation",
)
ALICE = Principal(tenant="acme", user="alice")


def _entry(key: int, body: str) -> LexicalEntry:
    return LexicalEntry(key=key, chunk_id=f"c{key}", doc_id=f"d{key}", tenant="t", readers=("*",), body=body)


def _search(lexical: LexicalIndex, query: str, weights: dict[str, float] | None = None) -> dict[int, float]:
    return dict(lexical.search(query, 10, tenant="t", reader_tokens=("*",), weights=weights))


def test_rm3_mixes_the_query_with_the_feedback_terms() -> None:
    feedback = [(["tape", "backup", "tape", "vault"], 3.0), (["backup", "offsit"], 1.0)]
    weights = rm3_weights(["backup"], feedback, terms=2, original=0.5)
    # P(w|R): tape .75 x 2/4 = .375, backup .75/4 + .25/2 = .3125, vault .1875, offsit .125; top 2 kept
    relevance = {"tape": 0.375, "backup": 0.3125}
    mass = sum(relevance.values())
    assert weights.keys() == {"backup", "tape"}
    assert math.isclose(weights["backup"], (0.5 + 0.5 * relevance["backup"] / mass) / 0.5)
    assert math.isclose(weights["tape"], 0.5 * relevance["tape"] / mass / 0.5)
    assert rm3_weights(["backup", "tape"], feedback, terms=5, original=1.0) == {"backup": 1.0, "tape": 1.0}
    assert rm3_weights(["backup"], [], terms=5, original=0.5) == {"backup": 1.0}
    with pytest.raises(InputError):
        rm3_weights(["backup"], feedback, terms=5, original=0.0)


@pytest.mark.parametrize("doc_weight", [0.0, 0.5])
def test_a_weighted_query_scores_the_weighted_sum_of_its_terms(tmp_path: Path, doc_weight: float) -> None:
    LexicalIndex.create(tmp_path)
    lexical = LexicalIndex.open(tmp_path, doc_weight=doc_weight, check_interval_ms=0)
    lexical.apply(add=[_entry(key, body) for key, body in enumerate(BODIES, 1)])
    whoosh = LexicalIndex.open(tmp_path, doc_weight=doc_weight, check_interval_ms=0, vectorised=False)
    backup, vault = _search(lexical, "backup"), _search(lexical, "vault")
    weighted = _search(lexical, "ignored text", {"backup": 2.0, "vault": 0.5, "absent": 0.0})
    assert weighted.keys() == backup.keys() | vault.keys()
    for key, score in weighted.items():
        assert math.isclose(score, 2.0 * backup.get(key, 0.0) + 0.5 * vault.get(key, 0.0), rel_tol=1e-9)
    if doc_weight == 0.0:  # Whoosh's own search has no document blend
        slow = _search(whoosh, "", {"backup": 2.0, "vault": 0.5})
        assert slow.keys() == weighted.keys()
        assert all(math.isclose(slow[key], weighted[key], rel_tol=1e-6) for key in slow)
    assert _search(lexical, "backup", {}) == {}  # every weight dropped: nothing to match
    lexical.close()
    whoosh.close()


def test_feedback_finds_the_chunk_that_shares_the_top_hits_words(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, retrieve_k=10)
    embedder = BowEmbedder()
    access = Access(tenant="acme")
    texts = [
        "nightly backup of the tapes to the offsite vault",
        "the offsite vault and its tapes are checked weekly",
        "laptop password rotation every ninety days",
    ]
    with Ingestor(settings, embedder) as ingestor:
        for n, text in enumerate(texts):
            ingestor.ingest_chunks(*make_document(f"doc{n}", [text], access, title=f"Doc {n}"))
        version = ingestor.version
    plain = Searcher(settings, version, embedder)
    expanded = Searcher(
        msgspec.structs.replace(settings, bm25_prf_docs=1, bm25_prf_terms=5), version, embedder
    )
    before = {hit.doc_id for hit in plain.search_sync("nightly backup", ALICE, mode="bm25").hits}
    after = [hit.doc_id for hit in expanded.search_sync("nightly backup", ALICE, mode="bm25").hits]
    assert before == {"doc0"}  # only the first chunk has the query's words
    assert after[0] == "doc0" and "doc1" in after and "doc2" not in after  # its words bring doc1, not doc2
    plain.close()
    expanded.close()
