"""The peer retrieval systems bench/peers.py runs beside ours (bm25s, tantivy, LanceDB, exact dense, RRF).

They are NOT dependencies of Docent (`make bench-peers` installs them); each one that cannot be imported
is skipped with the reason printed (`load_peers`). See bench/peers.py for what each system is.
"""

from __future__ import annotations

import importlib
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

DEPTH = 100  # chunks per list, as our eval
RRF_K = 60
PEER_MODULES = {"bm25s": "bm25s", "tantivy": "tantivy", "lancedb": "lancedb", "Stemmer": "PyStemmer"}
Matrix = npt.NDArray[np.float32]
Ranked = list[int]  # row indices into the corpus, best first


def load_peers() -> dict[str, ModuleType]:
    """The peer libraries that import here; each missing one is reported and skipped."""
    found: dict[str, ModuleType] = {}
    for name, package in PEER_MODULES.items():  # module -> PyPI package
        try:
            found[name] = importlib.import_module(name)
        except Exception as exc:  # ImportError, or a broken install's own error
            print(f"skipping {package}: {type(exc).__name__}: {exc} (.venv/bin/pip install {package})")
    return found


class Bm25sIndex:
    def __init__(self, bm25s: ModuleType, texts: Sequence[str], stemmer: Any = None) -> None:
        self.bm25s = bm25s
        self.stem = None if stemmer is None else stemmer.Stemmer("english").stemWords
        self.model = bm25s.BM25()
        corpus = bm25s.tokenize(list(texts), stopwords="en", stemmer=self.stem, show_progress=False)
        self.model.index(corpus, show_progress=False)
        self.size = len(texts)

    def search(self, query: str, k: int = DEPTH) -> Ranked:
        tokens = self.bm25s.tokenize(
            [query], stopwords="en", stemmer=self.stem, show_progress=False, return_ids=False
        )
        docs, scores = self.model.retrieve(tokens, k=min(k, self.size), show_progress=False)
        return [int(d) for d, s in zip(docs[0], scores[0], strict=True) if s > 0]


class TantivyIndex:
    def __init__(self, tantivy: ModuleType, texts: Sequence[str], directory: Path) -> None:
        builder = tantivy.SchemaBuilder()
        builder.add_integer_field("row", stored=True, indexed=False, fast=True)
        builder.add_text_field("body", stored=False)
        directory.mkdir(parents=True, exist_ok=True)
        self.index = tantivy.Index(builder.build(), path=str(directory))
        writer = self.index.writer()
        for row, text in enumerate(texts):
            writer.add_document(tantivy.Document(row=row, body=text))
        writer.commit()
        writer.wait_merging_threads()
        self.index.reload()
        self.searcher = self.index.searcher()

    def search(self, query: str, k: int = DEPTH) -> Ranked:
        parsed, _errors = self.index.parse_query_lenient(query, ["body"])
        hits = self.searcher.search(parsed, k).hits
        return [int(self.searcher.doc(address)["row"][0]) for _, address in hits]


class LanceIndex:
    """One LanceDB table (row, text, vector), native FTS on text, no vector index (flat, exact)."""

    def __init__(self, lancedb: ModuleType, texts: Sequence[str], vectors: Matrix, directory: Path) -> None:
        import pyarrow as pa
        from lancedb.rerankers import RRFReranker

        started = time.perf_counter()
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
        table = pa.table({
            "row": pa.array(range(len(texts)), pa.int64()),
            "text": pa.array(list(texts), pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
        })  # fmt: skip
        self.table = lancedb.connect(str(directory)).create_table("chunks", table, mode="overwrite")
        self.write_s = time.perf_counter() - started
        started = time.perf_counter()
        with warnings.catch_warnings():  # create_fts_index is deprecated in favour of a config object
            warnings.simplefilter("ignore")
            self.table.create_fts_index("text")
        self.fts_s = time.perf_counter() - started
        self.reranker = RRFReranker(K=RRF_K)

    def hybrid(self, query: str, vector: Matrix, k: int = DEPTH) -> Ranked:
        search = self.table.search(query_type="hybrid").vector(vector).text(query)
        found = search.distance_type("cosine").rerank(self.reranker).limit(k).select(["row"]).to_arrow()
        return [int(r) for r in found["row"].to_pylist()]

    def fts(self, query: str, k: int = DEPTH) -> Ranked:
        found = self.table.search(query, query_type="fts").limit(k).select(["row"]).to_arrow()
        return [int(r) for r in found["row"].to_pylist()]


def exact_dense(matrix: Matrix, vector: Matrix, k: int = DEPTH) -> Ranked:
    """Top k rows by cosine (the rows and the query are L2-normalised)."""
    scores = matrix @ vector
    k = min(k, len(scores))
    top = np.argpartition(-scores, k - 1)[:k]
    return [int(i) for i in top[np.argsort(-scores[top], kind="stable")]]


def rrf(lists: Iterable[Sequence[int]], k: int = RRF_K) -> Ranked:
    """Reciprocal rank fusion, equal weights, ranks from 1; ties keep first appearance."""
    scores: dict[int, float] = {}
    for ranked in lists:
        for rank, item in enumerate(ranked, 1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores, key=lambda item: -scores[item])
