"""Retrieval bench: ingest throughput (embed vs index) and query latency per stage at 10K and 100K chunks.

    .venv/bin/python bench/retrieval.py                 # both sizes, each in its own process
    .venv/bin/python bench/retrieval.py --size 100000   # one size
    .venv/bin/python bench/retrieval.py --embed-chunks 512
    .venv/bin/python bench/retrieval.py --chunks 1000000 --embed-chunks 0   # 1M chunks (--chunks = --size)

What it measures, and how the corpora are made:

- Source text: the real chunks of the three evaluation collections (vaswani, cranfield and the demo golden
  set's knowledge base: ~14.7K chunks of physics and aeronautics abstracts and Python reference pages),
  taken from the `docent eval` indexes under DOCENT_DATA_DIR/eval (built first when missing), together with
  the MiniLM vectors stored there.
- Embedding throughput: real MiniLM (CTranslate2 int8, settings.bulk_embed_threads) on the longest
  `--embed-chunks` chunks (~250 tokens each), through the production Ingestor (default commit size), so
  the figure is end-to-end: embed time (measured inside the embedder) + index time (the rest).
- The 10K / 100K / 1M corpora: the source chunks repeated; copy n > 0 of a chunk has its words resampled
  (bench/synthetic_text.py: 30% replaced by words drawn from the source's unigram distribution, 1% by new
  words, so the vocabulary grows with the corpus; `--text perturbed`: the first rounds' copies, every 9th
  word dropped, offset by n: 9 variants a chunk), and REUSES the source chunk's real vector plus small
  Gaussian noise (sigma 0.01 per dimension, renormalised) instead of running the model on 100K chunks.
  Index time is therefore measured without embedding, and the ingest rate reported for them is the index
  path alone; bulk loads use DOCS_PER_COMMIT_BULK documents per Whoosh commit / USearch generation (a delta
  file, index.vector_delta), then `Ingestor.optimize()` (one lexical segment, one vector graph), timed with
  the build (wall and this process's CPU seconds).
- Queries: the 373 judged queries of the three collections (keyword and question style), each once,
  through the async live path (`Searcher.search`: cached QueryEmbedder with nothing cached, so every
  embedding is cold; USearch || Whoosh in threads; z-score fusion; catalog), mode hybrid, k = 8, no rerank.
- Peak RSS: the process's high-water mark (ru_maxrss) after the build and after the queries.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: `python bench/retrieval.py`

import msgspec  # noqa: E402
import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

from bench.synthetic_text import Resampler  # noqa: E402
from index.embed import QueryEmbedder, load_embedder  # noqa: E402
from index.entries import chunk_of  # noqa: E402
from index.evalrun import EVAL_ACCESS, EVAL_PRINCIPAL, demo_corpus, ensure_index  # noqa: E402
from index.evaluate import load_collection  # noqa: E402
from index.ingest import Ingestor  # noqa: E402
from index.search import Searcher  # noqa: E402
from index.types import Chunk, Document, Embedder, ModelIdentity, make_chunk_id  # noqa: E402
from index.vectors import VectorIndex  # noqa: E402
from index.versions import get_active, read_manifest, version_path  # noqa: E402
from store.catalog import Catalog  # noqa: E402
from store.settings import Settings  # noqa: E402

SIZES = (10_000, 100_000)
SHARED_EVAL = REPO.parent / "shared" / "eval"
DOCS_PER_COMMIT_BULK = 4096
NOISE_SIGMA = 0.01
DROP_EVERY_WORDS = 9
QUERY_K = 8
PROGRESS_EVERY_S = 60.0
STAGES = ("embed", "ann", "bm25", "fuse", "catalog", "total")


class SourceChunk(msgspec.Struct, frozen=True):
    chunk: Chunk
    vector: list[float]


class LookupEmbedder:
    """An embedder with the wrapped one's identity: precomputed vectors by text, the model for the rest.

    `embed_s` accumulates the time spent inside `embed` (model calls and lookups)."""

    def __init__(self, base: Embedder, table: dict[str, npt.NDArray[np.float32]] | None = None) -> None:
        self.base = base
        self.table = table or {}
        self.embed_s = 0.0
        self.model_texts = 0

    @property
    def identity(self) -> ModelIdentity:
        return self.base.identity

    def count_tokens(self, text: str) -> int:
        return self.base.count_tokens(text)

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        started = time.perf_counter()
        missing = [t for t in texts if t not in self.table]
        if missing:
            self.model_texts += len(missing)
            computed = self.base.embed(missing)
            found = dict(zip(missing, computed, strict=True))
        else:
            found = {}
        out = np.stack([self.table[t] if t in self.table else found[t] for t in texts]).astype(np.float32)
        self.embed_s += time.perf_counter() - started
        return out


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def collections(settings: Settings) -> list[tuple[Path, Path]]:
    demo_dir = REPO / "index" / "golden" / "demo"
    out = [(SHARED_EVAL / name, SHARED_EVAL / name / "corpus.jsonl") for name in ("vaswani", "cranfield")]
    return [*out, (demo_dir, demo_corpus(settings))]


def source_chunks(settings: Settings, embedder: Embedder) -> tuple[list[SourceChunk], list[str]]:
    """Every chunk (with its stored vector) of the eval indexes, and the eval queries."""
    chunks: list[SourceChunk] = []
    queries: list[str] = []
    for directory, corpus in collections(settings):
        collection = load_collection(directory, corpus=corpus)
        queries += [q.text for q in collection.queries]
        local, _, _ = ensure_index(settings, collection, corpus, embedder)
        version = get_active(local)
        assert version is not None
        manifest = read_manifest(local, version)
        vectors = VectorIndex.open_reader(
            version_path(local, version), ndim=manifest.model.dimension, dtype=manifest.vector_dtype
        )
        catalog = Catalog.for_data_dir(local.data_path)
        keys = sorted(vectors.keys())
        rows = catalog.chunk_rows(version, keys)
        stored = vectors.get(keys)
        for key in keys:
            if key in rows and key in stored:
                chunks.append(SourceChunk(chunk=chunk_of(rows[key]), vector=stored[key].tolist()))
        catalog.close()
    return chunks, queries


def perturb(text: str, copy: int) -> str:
    if copy == 0:
        return text
    words = text.split(" ")
    kept = [w for i, w in enumerate(words) if (i + copy) % DROP_EVERY_WORDS != 0]
    return " ".join(kept) if kept else text


Vary = Callable[[str, int, int], str]  # (source text, corpus row, copy) -> text


def perturbed(text: str, row: int, copy: int) -> str:
    return perturb(text, copy)


def build_corpus(
    source: Sequence[SourceChunk], size: int, seed: int = 7, vary: Vary = perturbed
) -> tuple[list[tuple[Document, list[Chunk]]], dict[str, npt.NDArray[np.float32]]]:
    """`size` chunks grouped into documents (a source document per copy), and their vectors by text;
    copy n of a source chunk's text is `vary(text, row, n)`."""
    rng = np.random.default_rng(seed)
    documents: dict[str, tuple[Document, list[Chunk]]] = {}
    table: dict[str, npt.NDArray[np.float32]] = {}
    for i in range(size):
        src = source[i % len(source)]
        copy = i // len(source)
        doc_id = f"{src.chunk.doc_id}~{copy}"
        text = vary(src.chunk.text, i, copy)
        if doc_id not in documents:
            documents[doc_id] = (
                Document(
                    doc_id=doc_id,
                    title=src.chunk.title,
                    source=f"bench:{doc_id}",
                    format="txt",
                    content_hash=f"{doc_id}",
                    access=EVAL_ACCESS,
                ),
                [],
            )
        chunks = documents[doc_id][1]
        chunk = msgspec.structs.replace(
            src.chunk, chunk_id=make_chunk_id(doc_id, text, i), doc_id=doc_id, ordinal=len(chunks), text=text
        )
        chunks.append(chunk)
        vector = np.asarray(src.vector, dtype=np.float32)
        if copy:
            vector = vector + rng.normal(0.0, NOISE_SIGMA, vector.shape).astype(np.float32)
            vector /= np.linalg.norm(vector)
        table[chunk.indexed_text()] = vector
    return list(documents.values()), table


def bench_real_ingest(settings: Settings, source: Sequence[SourceChunk], n: int, workdir: Path) -> dict:
    """End-to-end ingest of the `n` longest source chunks with the real model (nothing precomputed)."""
    embedder = LookupEmbedder(load_embedder(settings, "minilm", purpose="offline"))
    longest = sorted(source, key=lambda s: -len(s.chunk.indexed_text()))[:n]
    tokens = [embedder.count_tokens(s.chunk.indexed_text()) + 2 for s in longest]
    by_doc: dict[str, list[Chunk]] = {}
    for s in longest:
        by_doc.setdefault(s.chunk.doc_id, []).append(s.chunk)
    items = [
        (
            Document(
                doc_id=doc_id,
                title=chunks[0].title,
                source="bench",
                format="txt",
                content_hash=doc_id,
                access=EVAL_ACCESS,
            ),
            [msgspec.structs.replace(c, ordinal=i) for i, c in enumerate(chunks)],
        )
        for doc_id, chunks in by_doc.items()
    ]
    local = msgspec.structs.replace(
        settings, data_dir=str(workdir / "real"), model_dir=str(settings.model_path)
    )
    started = time.perf_counter()
    with Ingestor(local, embedder) as ingestor:
        report = ingestor.ingest_many(items)
    total_s = time.perf_counter() - started
    assert report.failed == 0, report.errors
    return {
        "chunks": n,
        "tokens_mean": round(statistics.mean(tokens), 1),
        "tokens_min": min(tokens),
        "embed_s": round(embedder.embed_s, 2),
        "index_s": round(total_s - embedder.embed_s, 2),
        "total_s": round(total_s, 2),
        "embed_chunks_per_s": round(n / embedder.embed_s, 1),
        "ingest_chunks_per_s": round(n / total_s, 1),
    }


async def run_queries(searcher: Searcher, queries: Sequence[str]) -> dict[str, dict[str, float]]:
    samples: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for query in queries:
        result = await searcher.search(query, EVAL_PRINCIPAL, k=QUERY_K, mode="hybrid")
        for stage in STAGES:
            if stage in result.timings_ms:
                samples[stage].append(result.timings_ms[stage])
    return {
        stage: {"p50": round(percentile(v, 0.5), 2), "p95": round(percentile(v, 0.95), 2)}
        for stage, v in samples.items()
        if v
    }


class BuildProgress:
    """Prints the bulk build's progress to stderr every PROGRESS_EVERY_S: chunks indexed, wall and CPU
    seconds so far, the CPU milliseconds per chunk since the last line (a rate that climbs with the index's
    size shows what grows faster than linearly) and the RSS."""

    def __init__(self, documents: Sequence[tuple[Document, list[Chunk]]]) -> None:
        self.chunks_after = np.cumsum([len(chunks) for _, chunks in documents])
        self.started, self.cpu_started = time.perf_counter(), time.process_time()
        self.last = (0.0, 0, 0.0)  # (time printed, chunks then, CPU s then)

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - self.last[0] < PROGRESS_EVERY_S and done < total:
            return
        chunks = int(self.chunks_after[done - 1]) if done else 0
        cpu = time.process_time() - self.cpu_started
        per_chunk_ms = (cpu - self.last[2]) * 1000 / max(chunks - self.last[1], 1)
        print(
            f"build: {chunks:,} chunks ({done:,}/{total:,} documents) {now - self.started:.0f} s wall, "
            f"{cpu:.0f} CPU s, {per_chunk_ms:.2f} CPU ms a chunk since the last line, "
            f"RSS {current_rss_mb():.0f} MB",
            file=sys.stderr, flush=True,
        )  # fmt: skip
        self.last = (now, chunks, cpu)


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_size(settings: Settings, size: int, embed_chunks: int, text: str = "resampled") -> dict:
    workdir = settings.data_path / "bench" / f"retrieval-{size}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    minilm = load_embedder(settings, "minilm", purpose="offline")
    started = time.perf_counter()
    source, queries = source_chunks(settings, minilm)
    prepare_s = time.perf_counter() - started
    out: dict = {"size": size, "source_chunks": len(source), "queries": len(queries), "text": text}
    if embed_chunks:
        out["real_ingest"] = bench_real_ingest(settings, source, embed_chunks, workdir)
    print(f"{len(source):,} source chunks read; building the corpus", file=sys.stderr, flush=True)
    started = time.perf_counter()
    vary = Resampler(s.chunk.text for s in source).vary if text == "resampled" else perturbed
    documents, table = build_corpus(source, size, vary=vary)
    corpus_s = time.perf_counter() - started
    embedder = LookupEmbedder(minilm, table)
    local = msgspec.structs.replace(
        settings, data_dir=str(workdir / "bulk"), model_dir=str(settings.model_path)
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    with Ingestor(local, embedder, docs_per_commit=DOCS_PER_COMMIT_BULK) as ingestor:
        report = ingestor.ingest_many(documents, progress=BuildProgress(documents))
        print("build: optimize()", file=sys.stderr, flush=True)
        optimize_started = time.perf_counter()
        ingestor.optimize()  # one lexical segment and one vector graph, as after any bulk load
        optimize_s = time.perf_counter() - optimize_started
        version = ingestor.version
    build_s = time.perf_counter() - started
    build_cpu_s = time.process_time() - cpu_started
    assert report.failed == 0 and embedder.model_texts == 0
    out["bulk_ingest"] = {
        "chunks": size,
        "documents": len(documents),
        "vector_lookup_s": round(embedder.embed_s, 2),
        "index_s": round(build_s - embedder.embed_s, 2),
        "index_chunks_per_s": round(size / (build_s - embedder.embed_s), 1),
        "optimize_s": round(optimize_s, 1),
        "build_cpu_s": round(build_cpu_s, 1),
        "source_prepare_s": round(prepare_s, 1),
        "corpus_s": round(corpus_s, 1),
    }
    out["peak_rss_mb_after_build"] = peak_rss_mb()
    online = load_embedder(settings, "minilm", purpose="online")
    searcher = Searcher(
        local, version, online, query_embedder=QueryEmbedder(online, cache_size=len(queries) + 1)
    )
    asyncio.run(searcher.search("warm up the searchers and masks", EVAL_PRINCIPAL, k=QUERY_K))
    out["latency_ms"] = asyncio.run(run_queries(searcher, queries))
    searcher.close()
    out["peak_rss_mb"] = peak_rss_mb()
    shutil.rmtree(workdir, ignore_errors=True)
    return out


def print_report(r: dict) -> None:
    print(f"\n== {r['size']:,} chunks ({r['source_chunks']:,} real source chunks, {r['queries']} queries) ==")
    if "real_ingest" in r:
        e = r["real_ingest"]
        print(
            f"real MiniLM ingest of {e['chunks']} chunks "
            f"(mean {e['tokens_mean']} tokens, min {e['tokens_min']}): "
            f"embed {e['embed_s']} s = {e['embed_chunks_per_s']} chunks/s, index {e['index_s']} s, "
            f"end-to-end {e['ingest_chunks_per_s']} chunks/s"
        )
    b = r["bulk_ingest"]
    print(
        f"bulk index ({r.get('text', 'perturbed')} text, reused vectors, {b['documents']:,} documents): "
        f"{b['index_s']} s = {b['index_chunks_per_s']} chunks/s (vector lookup {b['vector_lookup_s']} s; "
        f"optimize {b.get('optimize_s', '-')} s; {b.get('build_cpu_s', '-')} CPU s this process)"
    )
    print("| stage | p50 ms | p95 ms |\n| --- | --- | --- |")
    for stage, v in r["latency_ms"].items():
        print(f"| {stage} | {v['p50']} | {v['p95']} |")
    print(f"peak RSS: {r['peak_rss_mb_after_build']} MB after build, {r['peak_rss_mb']} MB after queries")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--size", "--chunks", type=int, default=0, help="one corpus size (default: 10K and 100K)"
    )
    parser.add_argument(
        "--text", choices=("resampled", "perturbed"), default="resampled", help="how copies vary (see above)"
    )
    parser.add_argument("--embed-chunks", type=int, default=512, help="chunks embedded for real (0: skip)")
    args = parser.parse_args()
    settings = Settings.from_env()
    if args.size:
        result = bench_size(settings, args.size, args.embed_chunks, args.text)
        print_report(result)
        print(json.dumps(result, separators=(",", ":")))
        return
    for n, size in enumerate(SIZES):
        embed = args.embed_chunks if n == 0 else 0  # the real-model figure does not depend on the size
        cmd = [sys.executable, __file__, "--size", str(size), "--embed-chunks", str(embed)]
        subprocess.run([*cmd, "--text", args.text], check=True)


if __name__ == "__main__":
    main()
