"""One tenant cannot degrade another's search: repeated chunks are stored once, small indexes are searched
exactly, and a query matching a document's own words finds it in hybrid mode (issue 11, finding 4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from index.fusion import Fused, keep_lexical_top
from index.ingest import Ingestor
from index.search import Searcher
from index.types import Access, Principal
from index.vectors import VectorIndex
from tests.test_indexes import BowEmbedder, make_settings

ALICE = Principal(tenant="default", user="alice")
REPEATED = "Error 0x42: retrying the connection to the upstream service in five seconds.\n\n"


def test_thousands_of_identical_paragraphs_are_stored_once_and_harm_nobody(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, retrieve_k=20)
    embedder = BowEmbedder()
    with Ingestor(settings, embedder) as ingestor:
        ingestor.ingest_document(
            "handbook", data=b"Parental leave lasts sixteen weeks at full pay.", fmt="txt", access=Access()
        )
        flood = ingestor.ingest_document(
            "flood", data=(REPEATED * 3014).encode(), fmt="txt", access=Access(tenant="other")
        )
        version = ingestor.version
    assert flood.chunks <= 3  # 3,014 identical paragraphs: the first, the repeated and the last chunk
    searcher = Searcher(settings, version, embedder)
    for mode in ("dense", "bm25", "hybrid"):
        hits = searcher.search_sync("how long is parental leave", ALICE, k=3, mode=mode).hits  # type: ignore[arg-type]
        assert [h.doc_id for h in hits] == ["handbook"]
    searcher.close()


def test_a_small_index_is_searched_exactly(tmp_path: Path) -> None:
    vectors = VectorIndex.open_writer(tmp_path, ndim=16, dtype="f32")
    rng = np.random.default_rng(7)
    data = rng.standard_normal((500, 16)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    vectors.add(np.arange(1, 501), data)
    query = rng.standard_normal(16).astype(np.float32)
    query /= np.linalg.norm(query)
    exact = list(np.argsort(-(data @ query))[:50] + 1)
    assert [key for key, _ in vectors.search(query, 50)] == exact
    allowed = vectors.search(query, 10, allowed=lambda keys: keys % 7 == 0)
    assert [key for key, _ in allowed] == [key for key in exact_all(data, query) if key % 7 == 0][:10]


def exact_all(data: np.ndarray, query: np.ndarray) -> list[int]:
    return [int(key) for key in np.argsort(-(data @ query)) + 1]


def fused(*keys: int) -> list[Fused]:
    return [Fused(key=key, score=-n, ranks={"dense": n + 1}) for n, key in enumerate(keys)]


def test_an_outstanding_lexical_hit_is_kept_in_the_top_k() -> None:
    ranking = fused(1, 2, 3, 4, 5, 6)
    standout = [(6, 40.0), *((key, 1.0) for key in range(10, 30))]  # key 6: far above its list
    assert [f.key for f in keep_lexical_top(ranking, standout, 3)] == [1, 2, 6, 3, 4, 5]
    flat = [(6, 20.0), *((key, 30.0 - key) for key in range(11, 30))]  # a smooth list: fusion decides
    assert keep_lexical_top(ranking, flat, 3) == ranking
    assert keep_lexical_top(ranking, standout, 6) == ranking  # already inside
    assert keep_lexical_top(ranking, [], 3) == ranking
