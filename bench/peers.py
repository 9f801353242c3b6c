"""Our retrieval against what a user would assemble from peer libraries, side by side in one run.

Install the peers first (they are NOT dependencies of Docent; `make bench-peers` does both steps):

    .venv/bin/pip install bm25s tantivy lancedb
    .venv/bin/pip install PyStemmer          # optional: adds bm25s with its English (Snowball) stemmer

    .venv/bin/python bench/peers.py                         # quality: five collections, one table
    .venv/bin/python bench/peers.py --json                  # and one JSON line
    .venv/bin/python bench/peers.py ../shared/eval/debfaq   # any BEIR-layout collections
    .venv/bin/python bench/peers.py --inverted-grades cranfield   # its grade 1 is the best (see
                                                                   # bench/retrieval_quality.py)
    .venv/bin/python bench/peers.py --speed --size 100000   # build times and query latency at 100K chunks
    .venv/bin/python bench/peers.py --speed --size 100000 --rounds 3   # three passes: a steadier p95
    .venv/bin/python bench/peers.py --speed --size 100000 --rounds 3 --runs 3  # three runs, one build
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

Speed mode (`--speed`, `--lexical-build`) lives in bench/peers_speed.py, whose docstring says what it times.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: `python bench/peers.py`
os.environ.setdefault("LANCEDB_LOG", "error")  # LanceDB's deprecation chatter on every query

import numpy as np  # noqa: E402

from bench.peer_systems import (  # noqa: E402
    DEPTH,
    Bm25sIndex,
    LanceIndex,
    Matrix,
    Ranked,
    TantivyIndex,
    exact_dense,
    load_peers,
    rrf,
)
from bench.peers_speed import LEXICAL_BATCH, lexical_build, speed, speed_tables  # noqa: E402
from bench.retrieval import LookupEmbedder  # noqa: E402
from bench.retrieval_quality import add_inverted_grades, inverted_grades  # noqa: E402
from index.embed import load_embedder  # noqa: E402
from index.entries import chunk_of  # noqa: E402
from index.evalrun import DEMO_COLLECTION, demo_corpus, ensure_index, run_queries  # noqa: E402
from index.evaluate import Collection, dedupe_docs, load_collection, score_run  # noqa: E402
from index.search import Mode, Searcher  # noqa: E402
from index.types import Chunk, Embedder  # noqa: E402
from index.vectors import VectorIndex  # noqa: E402
from index.versions import get_active, read_manifest, version_path  # noqa: E402
from store.catalog import Catalog  # noqa: E402
from store.settings import Settings  # noqa: E402

SHARED = REPO.parent / "shared" / "eval"
DEFAULT_DIRS = (
    *(SHARED / name for name in ("vaswani", "cranfield", "perlfaq", "debfaq")),
    REPO / "tests" / "golden" / "demo",
)
QUALITY_SYSTEMS = (
    "ours hybrid", "ours bm25", "ours dense", "bm25s+dense RRF", "bm25s stem+dense RRF", "lancedb hybrid",
    "bm25s", "bm25s stem", "tantivy", "dense exact",
)  # fmt: skip
METRICS = (("ndcg@10", "nDCG@10"), ("recall@20", "R@20"))


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


def prepare(settings: Settings, directory: Path, base: Embedder, *, invert: bool = False) -> Prepared:
    corpus = None
    if not (directory / "corpus.jsonl").exists() and directory.name == DEMO_COLLECTION:
        corpus = demo_corpus(settings)
    collection = load_collection(directory, corpus=corpus)
    if invert:
        collection = inverted_grades(collection)
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


def quality(
    settings: Settings,
    directories: Sequence[Path],
    peers: Mapping[str, ModuleType],
    inverted: Sequence[str] = (),
) -> dict:
    base = load_embedder(settings, None, purpose="offline")
    report: dict[str, Any] = {"embedder": base.identity.name, "collections": {}}
    report["inverted_grades"] = [*inverted]
    for directory in directories:
        started = time.perf_counter()
        p = prepare(settings, Path(directory), base, invert=Path(directory).name in inverted)
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


# -- main ------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("collections", nargs="*", type=Path, help="BEIR-layout collection directories")
    parser.add_argument("--json", action="store_true", help="also print the report as one JSON line")
    parser.add_argument("--speed", action="store_true", help="build times and query latency instead")
    add_inverted_grades(parser)
    parser.add_argument("--size", type=int, default=100_000, help="speed mode: chunks in the corpus")
    parser.add_argument(
        "--lexical-build", action="store_true", help="only our lexical index's build at --size"
    )
    parser.add_argument("--rounds", type=int, default=1, help="speed mode: passes over the queries")
    parser.add_argument(
        "--runs", type=int, default=1, help="speed mode: round-robin runs over the same builds, each reported"
    )
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
        report = speed(settings, args.size, peers, args.rounds, args.runs)
        print(speed_tables(report))
    else:
        report = quality(settings, args.collections or list(DEFAULT_DIRS), peers, args.inverted_grades)
        print(f"embedder {report['embedder']}; document-level metrics over each system's top 100 chunks\n")
        print(quality_table(report))
    if args.json:
        print(json.dumps(report, separators=(",", ":")))


if __name__ == "__main__":
    main()
