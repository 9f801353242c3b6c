"""`docent eval DIR`: build (or reuse) an index of a BEIR-layout collection and score bm25, dense, hybrid.

    report = evaluate_collection(settings, Path("../shared/eval/vaswani"))
    print(format_table(report))             # the table; the report is JSON-ready

The index. Every corpus document becomes one catalog document (tenant "default", readable by everyone),
chunked by the production chunker (settings.chunk_tokens / chunk_overlap, the deterministic contextual
prefix: "Document: <title>.") and ingested by the production Ingestor into a private data directory:

    settings.data_path / "eval" / "<collection>-<corpus sha256[:12]>-<setup sha256[:12]>"

(a collection directory named "demo" without a corpus.jsonl, i.e. tests/golden/demo, is scored against
the demo knowledge base built on the fly by index.demo, under settings.data_path / "eval" / "demo-corpus"),
where the setup hash covers the embedder's identity (name, weights and tokenizer hashes, dimension), the
chunker and context versions, the chunk budget and the vector dtype. A finished build leaves BUILD_DONE_FILE;
a second run with the same corpus and embedder reuses the index without embedding anything (an interrupted
build resumes: the Ingestor skips documents already ingested).

The runs. Queries go through `Searcher.search_many_sync` — the same stages, access checks and fusion
(settings.fusion, z-score by default: index.fusion) as the live `SearchService` — in modes bm25, dense and
hybrid, and hybrid+rerank when settings.rerank_model names a reranker. `rrf-equal` is the hybrid with plain
equal-weight RRF (k = 60), the usual baseline. A document's rank is that of its best chunk (`dedupe_docs`),
and the metrics of `index.evaluate.score_run` are averaged over the judged queries. Query-time settings
(bm25_k1, bm25_b, bm25_doc_weight, fusion, fusion_dense_weight) change no index, so a cached index serves any
of them.

    reports = [evaluate_collection(settings, d) for d in dirs]
    print(format_summary(reports))          # one table: every collection x run
"""

from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec

from index.chunk import CHUNKER_VERSION, chunk_document
from index.context import CONTEXT_VERSION, deterministic_context
from index.embed import load_embedder
from index.evaluate import Collection, CorpusDoc, dedupe_docs, load_collection, score_run
from index.ingest import SPECIAL_TOKENS_RESERVE, Ingestor
from index.lexical import LEXICAL_VERSION
from index.search import Mode, Searcher
from index.types import EVERYONE, Access, Chunk, Document, Embedder, ParsedDocument, Principal, Section
from index.versions import get_active
from store.exceptions import IngestError
from store.settings import Settings

EVAL_DIR = "eval"
DEMO_COLLECTION = "demo"  # a collection named so without corpus.jsonl is scored on the demo knowledge base
BUILD_DONE_FILE = "build-done.json"
EVAL_TENANT = "default"
EVAL_PRINCIPAL = Principal(tenant=EVAL_TENANT, user="eval")
EVAL_ACCESS = Access(tenant=EVAL_TENANT, readers=(EVERYONE,))
DEPTH = 100  # hits per query (chunks), deduplicated to documents: recall@100 needs 100
INGEST_BATCH_DOCS = 512  # documents handed to the Ingestor per call (it commits every DOCS_PER_COMMIT)
RUN_ORDER = ("bm25", "dense", "rrf-equal", "hybrid", "hybrid+rerank")
TABLE_METRICS = (
    ("ndcg@10", "nDCG@10"),
    ("recall@20", "R@20"),
    ("failure@20", "fail@20"),
    ("recall@100", "R@100"),
    ("mrr@10", "MRR@10"),
)


class BuildInfo(msgspec.Struct, kw_only=True):
    collection: str
    corpus_sha256: str
    embedder: str
    documents: int
    chunks: int
    failed: int
    embed_and_index_s: float


def corpus_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def setup_digest(settings: Settings, embedder: Embedder) -> str:
    """What, besides the corpus, decides the index's content."""
    identity = embedder.identity
    parts = (
        identity.name, identity.weights_sha256, identity.tokenizer_sha256, str(identity.dimension),
        CHUNKER_VERSION, CONTEXT_VERSION, LEXICAL_VERSION, str(settings.chunk_tokens),
        str(settings.chunk_overlap), settings.vector_dtype,
    )  # fmt: skip
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def eval_index_dir(settings: Settings, name: str, corpus_sha256: str, embedder: Embedder) -> Path:
    return (
        settings.data_path / EVAL_DIR / f"{name}-{corpus_sha256[:12]}-{setup_digest(settings, embedder)[:12]}"
    )


def eval_settings(settings: Settings, directory: Path) -> Settings:
    """The caller's settings with the data under `directory` (models stay where they are)."""
    return msgspec.structs.replace(
        settings, data_dir=str(directory), model_dir=str(settings.model_path), retrieve_k=DEPTH
    )


def _document_chunks(settings: Settings, embedder: Embedder, doc: CorpusDoc) -> tuple[Document, list[Chunk]]:
    text = doc.text.strip() or doc.title.strip()
    parsed = ParsedDocument(
        title=doc.title.strip(), format="txt", sections=(Section(headings=(), text=text),)
    )
    document = Document(
        doc_id=doc._id, title=parsed.title, source=f"eval:{doc._id}", format="txt",
        content_hash=hashlib.sha256(f"{doc.title}\x00{doc.text}".encode()).hexdigest(), access=EVAL_ACCESS,
        size_bytes=len(doc.text.encode()),
    )  # fmt: skip
    chunks = chunk_document(
        parsed,
        doc_id=doc._id,
        access=EVAL_ACCESS,
        max_tokens=settings.chunk_tokens,
        overlap=settings.chunk_overlap,
        count_tokens=embedder.count_tokens,
        context_for=deterministic_context,
        reserve_tokens=SPECIAL_TOKENS_RESERVE,
    )
    return document, chunks


def _batches(items: Sequence[CorpusDoc], size: int) -> Iterator[Sequence[CorpusDoc]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def build_index(
    settings: Settings, collection: Collection, embedder: Embedder, corpus_sha256: str
) -> BuildInfo:
    """Ingest every document of the collection into `settings`' data directory (resumable)."""
    started = time.perf_counter()
    chunks = failed = 0
    with Ingestor(settings, embedder) as ingestor:
        for batch in _batches(
            [d for d in collection.corpus if (d.text or d.title).strip()], INGEST_BATCH_DOCS
        ):
            items = [_document_chunks(settings, embedder, doc) for doc in batch]
            report = ingestor.ingest_many(items)
            failed += report.failed
            chunks += sum(o.chunks for o in report.documents if o.status != "failed")
    if failed:
        raise IngestError(f"{failed} documents of {collection.name} failed to ingest")
    return BuildInfo(
        collection=collection.name,
        corpus_sha256=corpus_sha256,
        embedder=embedder.identity.name,
        documents=len(collection.corpus),
        chunks=chunks,
        failed=failed,
        embed_and_index_s=round(time.perf_counter() - started, 1),
    )


def ensure_index(
    settings: Settings, collection: Collection, corpus_path: Path, embedder: Embedder
) -> tuple[Settings, BuildInfo, bool]:
    """The eval settings of the collection's cached index, its build info, and whether it was reused."""
    digest = corpus_digest(corpus_path)
    directory = eval_index_dir(settings, collection.name, digest, embedder)
    done = directory / BUILD_DONE_FILE
    local = eval_settings(settings, directory)
    if done.exists() and get_active(local) is not None:
        return local, msgspec.json.decode(done.read_bytes(), type=BuildInfo), True
    directory.mkdir(parents=True, exist_ok=True)
    info = build_index(local, collection, embedder, digest)
    done.write_bytes(msgspec.json.encode(info))
    return local, info, False


def demo_corpus(settings: Settings) -> Path:
    """corpus.jsonl of the demo knowledge base, built from this machine's Python (for tests/golden/demo)."""
    from index.demo import build_demo_corpus, write_demo_collection

    root = settings.data_path / EVAL_DIR / "demo-corpus"
    docs = build_demo_corpus(root / "src")
    return write_demo_collection(root, docs)


def run_queries(searcher: Searcher, collection: Collection, mode: Mode) -> tuple[dict[str, list[str]], float]:
    """Document rankings per query id, and the median per-query search time in ms."""
    queries = [q for q in collection.queries if q.text.strip()]
    results = searcher.search_many_sync([q.text for q in queries], EVAL_PRINCIPAL, k=DEPTH, mode=mode)
    run = {
        q._id: dedupe_docs((hit.doc_id for hit in r.hits), DEPTH)
        for q, r in zip(queries, results, strict=True)
    }
    median_ms = statistics.median(r.timings_ms.get("total", 0.0) for r in results) if results else 0.0
    return run, round(median_ms, 2)


def evaluate_collection(
    settings: Settings,
    directory: Path,
    corpus: Path | None = None,
    *,
    embedder_name: str | None = None,
) -> dict:
    """Score bm25, dense, hybrid (and hybrid+rerank) on a BEIR-layout collection; see the module doc.

    The embedder is `embedder_name`, default settings.embed_model (the real MiniLM unless
    DOCENT_EMBED_MODEL says otherwise; tests use "hash"), loaded for offline (batch) use.
    """
    from index.rerank import load_reranker

    directory = Path(directory)
    if corpus is None and not (directory / "corpus.jsonl").exists() and directory.name == DEMO_COLLECTION:
        corpus = demo_corpus(settings)
    collection = load_collection(directory, corpus=corpus)
    corpus_path = Path(corpus) if corpus is not None else directory / "corpus.jsonl"
    embedder = load_embedder(settings, embedder_name, purpose="offline")
    local, info, cached = ensure_index(settings, collection, corpus_path, embedder)
    version = get_active(local)
    assert version is not None
    runs: dict[str, dict[str, float]] = {}
    latency: dict[str, float] = {}
    searcher = Searcher(local, version, embedder)
    try:
        modes: list[tuple[str, Mode]] = [("bm25", "bm25"), ("dense", "dense"), ("hybrid", "hybrid")]
        for name, mode in modes:
            run, latency[name] = run_queries(searcher, collection, mode)
            runs[name] = score_run(run, collection.qrels)
        fusion_name = searcher.fusion_name
        fusion, weights = searcher.fusion, searcher.weights
        searcher.fusion, searcher.weights = "rrf", {"dense": 1.0, "bm25": 1.0}  # the usual baseline
        run, latency["rrf-equal"] = run_queries(searcher, collection, "hybrid")
        runs["rrf-equal"] = score_run(run, collection.qrels)
        searcher.fusion, searcher.weights = fusion, weights
        reranker = load_reranker(settings)
        if reranker is not None:
            searcher.reranker = reranker
            run, latency["hybrid+rerank"] = run_queries(searcher, collection, "hybrid")
            runs["hybrid+rerank"] = score_run(run, collection.qrels)
    finally:
        searcher.close()
    return {
        "collection": collection.name,
        "runs": runs,
        "queries": sum(1 for q in collection.qrels if collection.qrels[q]),
        "documents": info.documents,
        "chunks": info.chunks,
        "embedder": embedder.identity.name,
        "fusion": fusion_name,
        "index": str(local.data_path),
        "cached": cached,
        "build_s": info.embed_and_index_s,
        "median_query_ms": latency,
    }


def format_table(report: dict) -> str:
    """A Markdown table of the report's runs, with a header line naming the collection and the index."""
    header = "| run | " + " | ".join(label for _, label in TABLE_METRICS) + " | median ms/query |"
    lines = [
        f"{report['collection']}: {report.get('queries', '?')} judged queries, "
        f"{report.get('documents', '?')} documents, {report.get('chunks', '?')} chunks, "
        f"embedder {report.get('embedder', '?')}, "
        f"fusion {report.get('fusion', '?')}" + (" (cached index)" if report.get("cached") else ""),
        "",
        header,
        "|" + " --- |" * (len(TABLE_METRICS) + 2),
    ]
    latency = report.get("median_query_ms", {})
    names = [n for n in RUN_ORDER if n in report["runs"]] + [n for n in report["runs"] if n not in RUN_ORDER]
    for name in names:
        metrics = report["runs"][name]
        cells = [f"{metrics[m]:.3f}" if m in metrics else "-" for m, _ in TABLE_METRICS]
        ms = latency.get(name)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'-' if ms is None else f'{ms:.1f}'} |")
    return "\n".join(lines)


def format_summary(reports: Sequence[dict]) -> str:
    """One Markdown table of several collections' reports: a row per (collection, run)."""
    header = "| collection | run | " + " | ".join(label for _, label in TABLE_METRICS) + " |"
    lines = [header, "|" + " --- |" * (len(TABLE_METRICS) + 2)]
    for report in reports:
        names = [n for n in RUN_ORDER if n in report["runs"]]
        names += [n for n in report["runs"] if n not in RUN_ORDER]
        for n, name in enumerate(names):
            label = f"{report['collection']} ({report.get('queries', '?')} q)" if n == 0 else ""
            cells = [f"{report['runs'][name].get(m, float('nan')):.3f}" for m, _ in TABLE_METRICS]
            lines.append(f"| {label} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
