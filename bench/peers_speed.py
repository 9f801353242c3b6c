"""bench/peers.py's speed mode: build times and query latency, ours against the peers, in one run.

    .venv/bin/python bench/peers.py --speed --size 100000 --rounds 3 --runs 3

Builds the corpus as bench/retrieval.py does (the real chunks of vaswani, cranfield and the demo knowledge
base, perturbed copies reusing their vectors), times each lexical engine's build (Whoosh through our
LexicalIndex, 4,096 chunks a commit as the bulk Ingestor does; bm25s; tantivy; LanceDB FTS) and our whole
Ingestor build (catalog + USearch + Whoosh, then `Ingestor.optimize()`: one lexical segment, one vector
graph), then runs the 373 eval queries one at a time, round-robin across systems (the order rotates per
query, so machine noise hits all alike): ours hybrid (Searcher.search_sync, k 10, with the query vector
precomputed: the embed stage is a dict lookup), its BM25 and ANN stages (from the same calls' timings),
bm25s + USearch (our HNSW parameters and vector dtype, index/vectors.py) + RRF, bm25s alone, tantivy top
100, LanceDB hybrid (flat vectors). Every hybrid takes the top 100 of each list and returns 10 hits; only
ours also reads the hits' rows (text, ACL re-check) from the catalog. bm25s runs unstemmed here (the
stemmer only changes the tokens, not the work). `--runs N` repeats the whole round-robin N times over the
same builds and reports each run on its own (interleaved runs: the ratios within a run are what to read on
a shared machine).
"""

from __future__ import annotations

import gc
import shutil
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import numpy as np

from bench.peer_systems import DEPTH, Bm25sIndex, LanceIndex, Matrix, TantivyIndex, rrf
from bench.retrieval import DOCS_PER_COMMIT_BULK, LookupEmbedder, build_corpus, source_chunks
from index.embed import load_embedder
from index.entries import lexical_entry
from index.evalrun import EVAL_PRINCIPAL
from index.ingest import Ingestor
from index.lexical import LexicalIndex
from index.search import Searcher
from index.types import Chunk
from index.vectors import CONNECTIVITY, EXPANSION_ADD, EXPANSION_SEARCH
from store.settings import Settings

SPEED_K = 10  # hits a speed-mode query returns
STAGES = ("bm25", "ann", "fuse", "catalog", "embed")  # ours hybrid's timings, reported beside it
WARMUP_QUERIES = 5
LEXICAL_BATCH = DOCS_PER_COMMIT_BULK


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
    stages: dict[str, list[float]] = {f"ours {stage} stage": [] for stage in STAGES}

    def ours(n: int) -> object:
        result = searcher.search_sync(corpus.queries[n], EVAL_PRINCIPAL, k=SPEED_K, mode="hybrid")
        for stage in STAGES:
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


def summarise(samples: Mapping[str, Sequence[float]]) -> dict[str, dict[str, float]]:
    return {
        name: {"p50": round(percentile(v, 0.5), 2), "p95": round(percentile(v, 0.95), 2),
               "mean": round(statistics.mean(v), 2)}
        for name, v in samples.items()
        if v
    }  # fmt: skip


def speed(
    settings: Settings, size: int, peers: Mapping[str, ModuleType], rounds: int = 1, runs: int = 1
) -> dict:
    workdir = settings.data_path / "bench" / f"peers-{size}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    local = msgspec.structs.replace(
        settings, data_dir=str(workdir / "ours"), model_dir=str(settings.model_path), retrieve_k=DEPTH
    )
    corpus = speed_corpus(settings, size)  # the source: the eval indexes under DOCENT_DATA_DIR/eval
    systems, builds, searcher, stages = speed_systems(local, corpus, peers, workdir)
    per_run: list[dict[str, dict[str, float]]] = []
    pooled: dict[str, list[float]] = {}
    try:
        for n in range(WARMUP_QUERIES):
            for query in systems.values():
                query(n)
        gc.collect()
        gc.freeze()  # the corpus this process holds (no query worker's heap) leaves the collector's scans
        for _ in range(runs):
            for values in stages.values():
                values.clear()
            samples = round_robin(systems, len(corpus.queries), rounds)
            samples.update({name: list(values) for name, values in stages.items()})
            per_run.append(summarise(samples))
            for name, values in samples.items():
                pooled.setdefault(name, []).extend(values)
    finally:
        searcher.close()
    shutil.rmtree(workdir, ignore_errors=True)
    return {
        "size": size, "queries": len(corpus.queries), "rounds": rounds, "build_s": dict(builds),
        "build_cpu_s": builds.cpu, "latency_ms": summarise(pooled), "runs": per_run,
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
PEER_HYBRID = "bm25s+usearch RRF"


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
    runs = report.get("runs", [])
    if len(runs) > 1:
        lines += [
            "",
            f"each of the {len(runs)} runs (the table above pools them): ours hybrid against {PEER_HYBRID}",
            "",
            "| run | ours p50 / p95 ms | peer p50 / p95 ms | peer / ours p50, p95 |",
            "| --- | --- | --- | --- |",
        ]
        for n, run in enumerate(runs, 1):
            ours, peer = run["ours hybrid"], run.get(PEER_HYBRID)
            if peer is None:
                continue
            lines.append(
                f"| {n} | {ours['p50']} / {ours['p95']} | {peer['p50']} / {peer['p95']} | "
                f"{peer['p50'] / ours['p50']:.2f}, {peer['p95'] / ours['p95']:.2f} |"
            )
    return "\n".join(lines)
