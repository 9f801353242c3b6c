"""First-start work for one machine: convert the models, build and ingest the demo knowledge base.

Runs in the `docent` command's own process (never in the web process). Everything is idempotent: a
converted model is found by its weights' hash, and re-ingesting an unchanged demo document does nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from actors.contextualize import make_contextualizer
from index.demo import DemoDoc, build_demo_corpus, demo_source_dir
from index.embed import load_embedder
from index.ingest import DocumentOutcome, Ingestor
from index.search import SearchService
from index.types import Access, Principal, SearchResult
from store.exceptions import DocentError
from store.settings import Settings

log = logging.getLogger(__name__)


def prepare_models(settings: Settings) -> dict[str, Any]:
    """Convert (once) the embedding model and, when it is the configured backend, the local LLM."""
    started = time.perf_counter()
    embedder = load_embedder(settings, settings.embed_model, purpose="offline")
    identity = embedder.identity
    report: dict[str, Any] = {"embedder": identity.name, "weights_sha256": identity.weights_sha256[:16]}
    if settings.llm_backend == "local":
        from actors.llm.gguf_convert import ensure_converted

        report["local_llm"] = str(ensure_converted(settings.model_path))
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def _ingest_demo_doc(ingestor: Ingestor, doc: DemoDoc, root: Path) -> DocumentOutcome:
    path = Path(doc.path) if Path(doc.path).is_absolute() else root / doc.path
    try:
        return ingestor.ingest_document(
            doc.doc_id, path=path, title=doc.title, access=doc.access, source=doc.source or None
        )
    except DocentError as exc:
        log.warning("demo document %s failed: %s", doc.doc_id, exc)
        return DocumentOutcome(doc_id=doc.doc_id, version=ingestor.version, status="failed",
                               error_code=exc.code, error=exc.message)  # fmt: skip


def ensure_demo(settings: Settings, *, force: bool = False) -> dict[str, Any]:
    """Write the demo corpus (stdlib docs through pydoc, license texts) and ingest what changed."""
    started = time.perf_counter()
    root = demo_source_dir(settings)
    docs = build_demo_corpus(root)
    embedder = load_embedder(settings, settings.embed_model, purpose="offline")
    with Ingestor(settings, embedder, contextualizer=make_contextualizer(settings)) as ingestor:
        if force:
            for doc in docs:
                ingestor.delete_document(doc.doc_id)
        outcomes = [_ingest_demo_doc(ingestor, doc, root) for doc in docs]
        version = ingestor.version
    counts = {status: sum(o.status == status for o in outcomes) for status in {o.status for o in outcomes}}
    return {
        "documents": len(docs),
        "outcomes": counts,
        "chunks": sum(o.chunks for o in outcomes),
        "embedded": sum(o.embedded for o in outcomes),
        "index_version": version,
        "source_dir": str(root),
        "seconds": round(time.perf_counter() - started, 1),
    }


def prepare(settings: Settings) -> None:
    print(f"models: {prepare_models(settings)}", flush=True)
    print("demo knowledge base: building and ingesting (first start embeds ~1,600 chunks)...", flush=True)
    print(f"demo knowledge base: {ensure_demo(settings)}", flush=True)


def ingest_paths(
    settings: Settings, paths: Sequence[Path], *, tenant: str, readers: Sequence[str]
) -> dict[str, Any]:
    embedder = load_embedder(settings, settings.embed_model, purpose="offline")
    access = Access(tenant=tenant, readers=tuple(readers) or ("*",))
    with Ingestor(settings, embedder, contextualizer=make_contextualizer(settings)) as ingestor:
        report = ingestor.ingest_paths(paths, access=access)
    result: dict[str, Any] = msgspec.to_builtins(report)
    result["errors"] = [msgspec.to_builtins(e) for e in report.errors]
    return result


async def search_once(
    settings: Settings, query: str, *, tenant: str, user: str, groups: Sequence[str], k: int, mode: str
) -> SearchResult:
    service = SearchService(settings)
    try:
        principal = Principal(tenant=tenant, user=user, groups=tuple(groups))
        return await service.search(query, principal, k=k, mode=mode)  # type: ignore[arg-type]
    finally:
        service.close()


if __name__ == "__main__":
    from store.settings import get_settings

    prepare(get_settings())
