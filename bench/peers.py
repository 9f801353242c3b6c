"""Our retrieval against what a user would assemble from peer libraries, side by side in one run.

Install the peers first (they are NOT dependencies of Docent; `make bench-peers` does both steps):

    .venv/bin/pip install bm25s tantivy lancedb
    .venv/bin/pip install PyStemmer          # optional: adds bm25s with its English (Snowball) stemmer

    .venv/bin/python bench/peers.py                         # quality: five collections, one table
    .venv/bin/python bench/peers.py --json                  # and one JSON line
    .venv/bin/python bench/peers.py ../shared/eval/debfaq   # any BEIR-layout collections
    .venv/bin/python bench/peers.py --speed --size 100000   # build times and query latency at 100K chunks
    .venv/bin/python bench/peers.py --speed --size 100000 --rounds 3   # three passes: a steadier p95
    .venv/bin/python bench/peers.py --lexical-build --size 1000000  # our lexical build alone (no peers)

A peer that cannot be imported is skipped with the reason printed. Every system sees the same chunks (the
visible rows of the collection's `docent eval` index, index.evalrun.ensure_index, cached under
DOCENT_DATA_DIR/eval), indexes each chunk's indexed text (context prefix + "\\n\\n" + text, what our BM25
and the embedder see) and shares the same MiniLM vectors: the chunk vectors stored in our USearch file,
and each query embedded once by the offline embedder.

Systems (each lexical peer with its own default analysis):
  ours bm25 / dense / hybrid  index.search.Searcher (search_many_sync, k 100), as shipped (settings.fusion);
  bm25s+dense RRF   bm25s top 100 and exact dense (numpy cosine over the same vectors) top 100, RRF k 60;
  lancedb hybrid    LanceDB native FTS + flat (exact) cosine vector search, limit 100, its RRFReranker
                    (K 60); FTS defaults: simple tokenizer, lower case, English stemmer and stop words,
                    ASCII folding;
  bm25s             BM25 "lucene" variant, k1 1.5, b .75, its regex tokenizer (\\w\\w+, lower case) with
                    stopwords="en" (its English list), no stemmer (bm25s's default);
  bm25s stem (+dense RRF)  the same with PyStemmer's English stemmer, as bm25s's README does (when
                    PyStemmer is installed);
  tantivy           its "default" tokenizer (lower case, no stemming, no stop words), BM25 k1 1.2 b .75,
                    the query parsed leniently (terms OR-ed);
  dense exact       the numpy cosine list of bm25s+dense RRF alone (a check on our ANN).
Quality metrics are document-level: a document's rank is its best chunk's (index.evaluate.dedupe_docs over
each system's top 100 chunks), scored by index.evaluate.score_run.

Speed mode builds the corpus as bench/retrieval.py does (the real chunks of vaswani, cranfield and the demo
knowledge base, perturbed copies reusing their vectors), times each lexical engine's build (Whoosh through our
LexicalIndex, 4,096 chunks a commit as the bulk Ingestor does; bm25s; tantivy; LanceDB FTS) and our whole
Ingestor build (catalog + USearch + Whoosh, then `Ingestor.optimize()`: one lexical segment), then runs the
373 eval queries one at a time, round-robin across systems (the order rotates per query, so machine noise hits
all alike): ours hybrid (Searcher.search_sync, k 10, with the query vector precomputed: the embed stage is a
dict lookup), its BM25 and ANN stages (from the same calls' timings), bm25s + USearch (our HNSW parameters and
vector dtype, index/vectors.py) + RRF, bm25s alone, tantivy top 100, LanceDB hybrid (flat vectors). Every
hybrid takes the top 100 of each list and returns 10 hits; only ours also reads the hits' rows (text, ACL
re-check) from the catalog. bm25s runs unstemmed here (the stemmer only changes the tokens, not the work).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: `python bench/peers.py`
os.environ.setdefault("LANCEDB_LOG", "error")  # LanceDB's deprecation chatter on every query

import msgspec  # noqa: E402
import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

from bench.retrieval import DOCS_PER_COMMIT_BULK, LookupEmbedder, build_corpus, source_chunks  # noqa: E402
from index.embed import load_embedder  # noqa: E402
from index.entries import chunk_of, lexical_entry  # noqa: E402
from index.evalrun import (  # noqa: E402
    DEMO_COLLECTION,
    EVAL_PRINCIPAL,
    demo_corpus,
    ensure_index,
    run_queries,
)
from index.evaluate import Collection, dedupe_docs, load_collection, score_run  # noqa: E402
from index.ingest import Ingestor  # noqa: E402
from index.lexical import LexicalIndex  # noqa: E402
from index.search import Mode, Searcher  # noqa: E402
from index.types import Chunk, Embedder  # noqa: E402
from index.vectors import CONNECTIVITY, EXPANSION_ADD, EXPANSION_SEARCH, VectorIndex  # noqa: E402
from index.versions import get_active, read_manifest, version_path  # noqa: E402
from store.catalog import Catalog  # noqa: E402
from store.settings import Settings  # noqa: E402

SHARED = REPO.parent / "shared" / "eval"
DEFAULT_DIRS = (
    *(SHARED / name for name in ("vaswani", "cranfield", "perlfaq", "debfaq")),
    REPO / "tests" / "golden" / "demo",
)
DEPTH = 100  # chunks per list, as our eval
RRF_K = 60
SPEED_K = 10  # hits a speed-mode query returns
WARMUP_QUERIES = 5
LEXICAL_BATCH = DOCS_PER_COMMIT_BULK
PEER_MODULES = {"bm25s": "bm25s", "tantivy": "tantivy", "lancedb": "lancedb", "Stemmer": "PyStemmer"}
QUALITY_SYSTEMS = (
    "ours hybrid", "ours bm25", "ours dense", "bm25s+dense RRF", "bm25s stem+dense RRF", "lancedb hybrid",
    "bm25s", "bm25s stem", "tantivy", "dense exact",
)  # fmt: skip
METRICS = (("ndcg@10", "nDCG@10"), ("recall@20", "R@20"))
Matrix = npt.NDArray[np.float32]
Ranked = list[int]  # row indices into the corpus, best first


# -- peers -----------------------------------------------------------------------------------------------


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


# -- quality ---------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    collection: Collection
    settings: Settings
    version: str
    chunks: list[Chunk]
    vectors: Matrix  # row i: chunks[i]'s stored vector
    queries: list[str]
    query_ids: list[str]
    query_vectors: Matrix
    embedder: Embedder


def index_chunks(settings: Settings, version: str) -> tuple[list[Chunk], Matrix]:
    """The visible chunks of an index version (by key) and their stored vectors."""
    manifest = read_manifest(settings, version)
    reader = VectorIndex.open_reader(
        version_path(settings, version), ndim=manifest.model.dimension, dtype=manifest.vector_dtype
    )
    catalog = Catalog.for_data_dir(settings.data_path)
    try:
        keys = sorted(reader.keys())
        rows = catalog.chunk_rows(version, keys)
    finally:
        catalog.close()
    stored = reader.get([key for key in keys if key in rows])
    kept = [key for key in keys if key in rows and key in stored]
    return [chunk_of(rows[key]) for key in kept], np.stack([stored[key] for key in kept])


def prepare(settings: Settings, directory: Path, base: Embedder) -> Prepared:
    corpus = None
    if not (directory / "corpus.jsonl").exists() and directory.name == DEMO_COLLECTION:
        corpus = demo_corpus(settings)
    collection = load_collection(directory, corpus=corpus)
    local, _, _ = ensure_index(settings, collection, corpus or directory / "corpus.jsonl", base)
    version = get_active(local)
    assert version is not None
    chunks, vectors = index_chunks(local, version)
    judged = [q for q in collection.queries if q.text.strip()]
    texts = [q.text for q in judged]
    query_vectors = np.asarray(base.embed(texts), dtype=np.float32)  # once, shared by every system
    table = dict(zip(texts, query_vectors, strict=True))
    return Prepared(
        collection=collection, settings=local, version=version, chunks=chunks, vectors=vectors,
        queries=texts, query_ids=[q._id for q in judged], query_vectors=query_vectors,
        embedder=LookupEmbedder(base, table),
    )  # fmt: skip


def ours_runs(p: Prepared) -> dict[str, dict[str, list[str]]]:
    searcher = Searcher(p.settings, p.version, p.embedder)
    modes: tuple[Mode, ...] = ("hybrid", "bm25", "dense")
    try:
        return {f"ours {mode}": run_queries(searcher, p.collection, mode)[0] for mode in modes}
    finally:
        searcher.close()


def peer_rankings(p: Prepared, peers: Mapping[str, ModuleType], workdir: Path) -> dict[str, list[Ranked]]:
    """Each peer system's chunk ranking (row indices) per query, in query order."""
    texts = [c.indexed_text() for c in p.chunks]
    out: dict[str, list[Ranked]] = {"dense exact": [exact_dense(p.vectors, v) for v in p.query_vectors]}
    if "bm25s" in peers:
        lexical = Bm25sIndex(peers["bm25s"], texts)
        out["bm25s"] = [lexical.search(q) for q in p.queries]
        out["bm25s+dense RRF"] = fuse_dense(out["bm25s"], out["dense exact"])
    if "bm25s" in peers and "Stemmer" in peers:
        stemmed = Bm25sIndex(peers["bm25s"], texts, peers["Stemmer"])
        out["bm25s stem"] = [stemmed.search(q) for q in p.queries]
        out["bm25s stem+dense RRF"] = fuse_dense(out["bm25s stem"], out["dense exact"])
    if "tantivy" in peers:
        tantivy_index = TantivyIndex(peers["tantivy"], texts, workdir / "tantivy")
        out["tantivy"] = [tantivy_index.search(q) for q in p.queries]
    if "lancedb" in peers:
        lance = LanceIndex(peers["lancedb"], texts, p.vectors, workdir / "lancedb")
        out["lancedb hybrid"] = [lance.hybrid(q, v) for q, v in zip(p.queries, p.query_vectors, strict=True)]
    return out


def fuse_dense(lexical: Sequence[Ranked], dense: Sequence[Ranked]) -> list[Ranked]:
    return [rrf([b, d])[:DEPTH] for b, d in zip(lexical, dense, strict=True)]


def doc_run(p: Prepared, rankings: Sequence[Ranked]) -> dict[str, list[str]]:
    return {
        qid: dedupe_docs((p.chunks[row].doc_id for row in ranked), DEPTH)
        for qid, ranked in zip(p.query_ids, rankings, strict=True)
    }


def quality_collection(p: Prepared, peers: Mapping[str, ModuleType]) -> dict[str, dict[str, float]]:
    runs = ours_runs(p)
    with tempfile.TemporaryDirectory(prefix="docent-peers-") as tmp:
        for name, rankings in peer_rankings(p, peers, Path(tmp)).items():
            runs[name] = doc_run(p, rankings)
    return {name: score_run(run, p.collection.qrels) for name, run in runs.items()}


def quality(settings: Settings, directories: Sequence[Path], peers: Mapping[str, ModuleType]) -> dict:
    base = load_embedder(settings, None, purpose="offline")
    report: dict[str, Any] = {"embedder": base.identity.name, "collections": {}}
    for directory in directories:
        started = time.perf_counter()
        p = prepare(settings, Path(directory), base)
        scores = quality_collection(p, peers)
        report["collections"][p.collection.name] = {
            "queries": len(p.queries), "chunks": len(p.chunks), "runs": scores,
            "seconds": round(time.perf_counter() - started, 1),
        }  # fmt: skip
        print(f"{p.collection.name}: {len(p.queries)} queries, {len(p.chunks)} chunks", file=sys.stderr)
    return report


def quality_table(report: Mapping[str, Any]) -> str:
    present = {s for entry in report["collections"].values() for s in entry["runs"]}
    systems = [s for s in QUALITY_SYSTEMS if s in present]
    lines = [
        "| collection | metric | " + " | ".join(systems) + " |",
        "|" + " --- |" * (len(systems) + 2),
    ]
    for name, entry in report["collections"].items():
        for metric, label in METRICS:
            cells = [f"{entry['runs'][s][metric]:.3f}" if s in entry["runs"] else "-" for s in systems]
            lines.append(f"| {name} ({entry['queries']} q) | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- speed -----------------------------------------------------------------------------------------------


@dataclass
class SpeedCorpus:
    documents: list[tuple[Any, list[Chunk]]]
    chunks: list[Chunk]
    texts: list[str]
    vectors: Matrix
    queries: list[str]
    query_vectors: Matrix
    embedder: LookupEmbedder


def speed_corpus(settings: Settings, size: int) -> SpeedCorpus:
    base = load_embedder(settings, "minilm", purpose="offline")
    source, queries = source_chunks(settings, base)
    queries = [q for q in queries if q.strip()]
    documents, table = build_corpus(source, size)
    chunks = [chunk for _, doc_chunks in documents for chunk in doc_chunks]
    texts = [c.indexed_text() for c in chunks]
    query_vectors = np.asarray(base.embed(queries), dtype=np.float32)
    table.update(zip(queries, query_vectors, strict=True))
    return SpeedCorpus(
        documents=documents, chunks=chunks, texts=texts, vectors=np.stack([table[t] for t in texts]),
        queries=queries, query_vectors=query_vectors, embedder=LookupEmbedder(base, table),
    )  # fmt: skip


class Builds(dict[str, float]):
    """Wall seconds of each build by name, and in `cpu` this process's CPU seconds over it (all threads):
    on a shared machine the CPU time is the steadier figure."""

    def __init__(self) -> None:
        super().__init__()
        self.cpu: dict[str, float] = {}

    def run(self, name: str, build: Callable[[], Any]) -> Any:
        started, cpu = time.perf_counter(), time.process_time()
        built = build()
        self[name] = round(time.perf_counter() - started, 2)
        self.cpu[name] = round(time.process_time() - cpu, 2)
        return built


def build_whoosh(corpus: SpeedCorpus, directory: Path) -> None:
    """Our lexical index alone, through LexicalIndex, LEXICAL_BATCH chunks a commit."""
    LexicalIndex.create(directory)
    lexical = LexicalIndex.open(directory)
    try:
        for start in range(0, len(corpus.chunks), LEXICAL_BATCH):
            batch = corpus.chunks[start : start + LEXICAL_BATCH]
            lexical.apply(add=[lexical_entry(c.key, c) for c in batch])
    finally:
        lexical.close()


def build_ours(settings: Settings, corpus: SpeedCorpus) -> str:
    with Ingestor(settings, corpus.embedder, docs_per_commit=DOCS_PER_COMMIT_BULK) as ingestor:
        report = ingestor.ingest_many(corpus.documents)
        ingestor.optimize()  # one lexical segment, as after any bulk load
        version = ingestor.version
    assert report.failed == 0, report.errors
    return version


def build_usearch(vectors: Matrix, dtype: str) -> Any:
    """A USearch HNSW index with our parameters (index/vectors.py) and vector dtype."""
    from usearch.index import Index

    index = Index(
        ndim=vectors.shape[1], metric="cos", dtype=dtype, connectivity=CONNECTIVITY,
        expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH,
    )  # fmt: skip
    index.add(np.arange(len(vectors), dtype=np.uint64), vectors)
    return index


Query = Callable[[int], object]  # query number -> (discarded) result


def speed_systems(
    settings: Settings, corpus: SpeedCorpus, peers: Mapping[str, ModuleType], workdir: Path
) -> tuple[dict[str, Query], Builds, Searcher, dict[str, list[float]]]:
    """The timed query functions, the build seconds, our Searcher and its per-stage samples."""
    builds = Builds()
    builds.run("whoosh (LexicalIndex)", lambda: build_whoosh(corpus, workdir / "whoosh-alone"))
    version = builds.run("ours Ingestor (catalog + USearch + Whoosh)", lambda: build_ours(settings, corpus))
    searcher = Searcher(settings, version, corpus.embedder)
    stages: dict[str, list[float]] = {"ours bm25 stage": [], "ours ann stage": [], "ours embed stage": []}

    def ours(n: int) -> object:
        result = searcher.search_sync(corpus.queries[n], EVAL_PRINCIPAL, k=SPEED_K, mode="hybrid")
        for stage in ("bm25", "ann", "embed"):
            stages[f"ours {stage} stage"].append(result.timings_ms.get(stage, 0.0))
        return result

    systems: dict[str, Query] = {"ours hybrid": ours}
    systems.update(peer_speed_systems(settings, corpus, peers, workdir, builds))
    return systems, builds, searcher, stages


def peer_speed_systems(
    settings: Settings,
    corpus: SpeedCorpus,
    peers: Mapping[str, ModuleType],
    workdir: Path,
    builds: Builds,
) -> dict[str, Query]:
    systems: dict[str, Query] = {}
    q, v = corpus.queries, corpus.query_vectors
    if "bm25s" in peers:
        lexical = builds.run("bm25s", lambda: Bm25sIndex(peers["bm25s"], corpus.texts))
        ann = builds.run(
            "usearch (HNSW, for bm25s+usearch)", lambda: build_usearch(corpus.vectors, settings.vector_dtype)
        )

        def bm25s_usearch(n: int) -> object:
            dense = [int(key) for key in ann.search(v[n], DEPTH).keys]
            return rrf([lexical.search(q[n]), dense])[:SPEED_K]

        systems["bm25s+usearch RRF"] = bm25s_usearch
        systems["bm25s"] = lambda n: lexical.search(q[n])
    if "tantivy" in peers:
        tantivy_index = builds.run(
            "tantivy", lambda: TantivyIndex(peers["tantivy"], corpus.texts, workdir / "tantivy")
        )
        systems["tantivy"] = lambda n: tantivy_index.search(q[n])
    if "lancedb" in peers:
        lance = LanceIndex(peers["lancedb"], corpus.texts, corpus.vectors, workdir / "lancedb")
        builds["lancedb table write"], builds["lancedb FTS"] = round(lance.write_s, 2), round(lance.fts_s, 2)
        systems["lancedb hybrid"] = lambda n: lance.hybrid(q[n], v[n], DEPTH)[:SPEED_K]
    return systems


def round_robin(systems: Mapping[str, Query], queries: int, rounds: int = 1) -> dict[str, list[float]]:
    """Milliseconds per query per system; query n runs the systems in an order rotated by n (`rounds`
    passes over the queries: more samples for the p95 on a noisy machine)."""
    names = list(systems)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for turn in range(queries * rounds):
        n = turn % queries
        for i in range(len(names)):
            name = names[(turn + i) % len(names)]
            started = time.perf_counter()
            systems[name](n)
            samples[name].append((time.perf_counter() - started) * 1000)
    return samples


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def speed(settings: Settings, size: int, peers: Mapping[str, ModuleType], rounds: int = 1) -> dict:
    workdir = settings.data_path / "bench" / f"peers-{size}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    local = msgspec.structs.replace(
        settings, data_dir=str(workdir / "ours"), model_dir=str(settings.model_path), retrieve_k=DEPTH
    )
    corpus = speed_corpus(settings, size)  # the source: the eval indexes under DOCENT_DATA_DIR/eval
    systems, builds, searcher, stages = speed_systems(local, corpus, peers, workdir)
    try:
        for n in range(WARMUP_QUERIES):
            for query in systems.values():
                query(n)
        for values in stages.values():
            values.clear()
        gc.collect()
        gc.freeze()  # the corpus this process holds (no query worker's heap) leaves the collector's scans
        samples = round_robin(systems, len(corpus.queries), rounds)
    finally:
        searcher.close()
    samples.update(stages)
    shutil.rmtree(workdir, ignore_errors=True)
    latency = {
        name: {"p50": round(percentile(v, 0.5), 2), "p95": round(percentile(v, 0.95), 2),
               "mean": round(statistics.mean(v), 2)}
        for name, v in samples.items()
    }  # fmt: skip
    return {
        "size": size, "queries": len(corpus.queries), "rounds": rounds, "build_s": dict(builds),
        "build_cpu_s": builds.cpu, "latency_ms": latency,
    }  # fmt: skip


def lexical_build(settings: Settings, size: int) -> dict[str, Any]:
    """Our lexical index alone at `size` chunks (the speed corpus's perturbed copies, made batch by batch
    without vectors, so 1M fits in memory), LEXICAL_BATCH chunks a commit: wall and CPU seconds."""
    from bench.retrieval import perturb

    source, _ = source_chunks(settings, load_embedder(settings, "minilm", purpose="offline"))
    workdir = settings.data_path / "bench" / f"lexical-{size}"
    shutil.rmtree(workdir, ignore_errors=True)
    LexicalIndex.create(workdir)
    lexical = LexicalIndex.open(workdir)
    wall = cpu = 0.0
    try:
        for start in range(0, size, LEXICAL_BATCH):
            batch = []
            for i in range(start, min(size, start + LEXICAL_BATCH)):
                src, copy = source[i % len(source)].chunk, i // len(source)
                chunk = msgspec.structs.replace(
                    src, text=perturb(src.text, copy), doc_id=f"{src.doc_id}~{copy}"
                )
                batch.append(lexical_entry(i + 1, chunk))
            started, cpu_started = time.perf_counter(), time.process_time()
            lexical.apply(add=batch)
            wall += time.perf_counter() - started
            cpu += time.process_time() - cpu_started
        segments = len(lexical.ix._segments())
    finally:
        lexical.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return {"size": size, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "segments": segments}


LEXICAL_ONLY = ("bm25s", "tantivy")


def speed_tables(report: Mapping[str, Any]) -> str:
    size = report["size"]
    lines = [
        f"builds at {size:,} chunks (CPU s: this process, all threads)", "",
        "| index | build s | chunks/s | CPU s |", "| --- | --- | --- | --- |",
    ]  # fmt: skip
    cpu = report.get("build_cpu_s", {})
    for name, seconds in report["build_s"].items():
        rate = f"{size / seconds:,.0f}" if seconds else "-"
        lines.append(f"| {name} | {seconds:.2f} | {rate} | {cpu.get(name, '-')} |")
    latency = report["latency_ms"]
    lines += [
        "",
        f"{report['queries']} queries x {report.get('rounds', 1)} rounds, one at a time, round-robin; "
        "ratio = system / ours (hybrids against ours hybrid, lexical peers against ours bm25 stage)",
        "",
        "| system | p50 ms | p95 ms | mean ms | p50 ratio | p95 ratio |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, v in latency.items():
        ref = latency["ours bm25 stage"] if name in LEXICAL_ONLY else latency["ours hybrid"]
        ratio = "- | -"
        if not name.startswith("ours"):
            ratio = f"{v['p50'] / ref['p50']:.2f} | {v['p95'] / ref['p95']:.2f}"
        lines.append(f"| {name} | {v['p50']} | {v['p95']} | {v['mean']} | {ratio} |")
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("collections", nargs="*", type=Path, help="BEIR-layout collection directories")
    parser.add_argument("--json", action="store_true", help="also print the report as one JSON line")
    parser.add_argument("--speed", action="store_true", help="build times and query latency instead")
    parser.add_argument("--size", type=int, default=100_000, help="speed mode: chunks in the corpus")
    parser.add_argument(
        "--lexical-build", action="store_true", help="only our lexical index's build at --size"
    )
    parser.add_argument("--rounds", type=int, default=1, help="speed mode: passes over the queries")
    args = parser.parse_args()
    settings = Settings.from_env()
    if args.lexical_build:
        report = lexical_build(settings, args.size)
        wall, cpu = report["wall_s"], report["cpu_s"]
        print(
            f"lexical index (LexicalIndex.apply, {LEXICAL_BATCH:,} chunks a commit) at {args.size:,} chunks: "
            f"{wall} s wall ({args.size / wall:,.0f} chunks/s), {cpu} s CPU "
            f"({args.size / cpu:,.0f} chunks per CPU-second), {report['segments']} segments"
        )
        return
    peers = load_peers()
    if args.speed:
        report = speed(settings, args.size, peers, args.rounds)
        print(speed_tables(report))
    else:
        report = quality(settings, args.collections or list(DEFAULT_DIRS), peers)
        print(f"embedder {report['embedder']}; document-level metrics over each system's top 100 chunks\n")
        print(quality_table(report))
    if args.json:
        print(json.dumps(report, separators=(",", ":")))


if __name__ == "__main__":
    main()
