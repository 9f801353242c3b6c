"""Questions with the passages the product retrieves for them, from the shared question collections.

    items = qa_items(settings, per_collection=12, k=8)   # [QAItem(collection, qid, question, hits)]

The collections are perlfaq and debfaq (`/work/shared/eval`, BEIR layout) and the demo golden set
(`index/golden/demo`, scored against the demo knowledge base built from this machine's Python). Each gets
the cached evaluation index of `index.evalrun` (built on first use, reused after), and every question is
searched by the same hybrid search as the live service. Questions are taken evenly spread over each
collection (every n-th), so a run is the same every time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import msgspec

from actors.attribution import Embed, Matrix
from index.embed import load_embedder
from index.evalrun import EVAL_PRINCIPAL, demo_corpus, ensure_index
from index.evaluate import Query, load_collection
from index.search import SearchService
from index.types import Hit
from store.settings import Settings

REPO = Path(__file__).resolve().parent.parent
SHARED_EVAL = REPO.parent / "shared" / "eval"
COLLECTIONS: tuple[tuple[str, Path], ...] = (
    ("perlfaq", SHARED_EVAL / "perlfaq"),
    ("debfaq", SHARED_EVAL / "debfaq"),
    ("demo", REPO / "index" / "golden" / "demo"),
)


class QAItem(msgspec.Struct, frozen=True, kw_only=True):
    collection: str
    qid: str
    question: str
    hits: tuple[Hit, ...]


def bench_settings(data_dir: Path, model_dir: Path) -> Settings:
    return Settings.from_env({"DOCENT_DATA_DIR": str(data_dir), "DOCENT_MODEL_DIR": str(model_dir)})


def qa_embed(settings: Settings) -> Embed:
    """The query embedder as the worker's `Knowledge.embed` gives it (async, L2-normalised rows)."""
    embedder = load_embedder(settings, "minilm", purpose="online")

    async def embed(texts: Sequence[str]) -> Matrix:
        return embedder.embed(texts)

    return embed


def every_nth(queries: Sequence[Query], count: int) -> list[Query]:
    step = max(1, len(queries) // max(1, count))
    return list(queries[::step][:count])


def collection_items(settings: Settings, name: str, directory: Path, count: int, k: int) -> list[QAItem]:
    corpus = demo_corpus(settings) if name == "demo" else directory / "corpus.jsonl"
    collection = load_collection(directory, corpus=corpus)
    embedder = load_embedder(settings, purpose="online")
    local, _, _ = ensure_index(settings, collection, corpus, embedder)
    queries = every_nth(collection.queries, count)
    service = SearchService(local)
    try:
        searcher = service.current()
        results = searcher.search_many_sync([q.text for q in queries], EVAL_PRINCIPAL, k=k, mode="hybrid")
    finally:
        service.close()
    return [
        QAItem(collection=name, qid=q._id, question=q.text, hits=tuple(r.hits))
        for q, r in zip(queries, results, strict=True)
    ]


def qa_items(settings: Settings, per_collection: int, k: int) -> list[QAItem]:
    return [
        item
        for name, directory in COLLECTIONS
        for item in collection_items(settings, name, directory, per_collection, k)
    ]
