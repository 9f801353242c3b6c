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

from actors.ingestion import DocumentRequest, ingest_documents, ingest_files, summary
from index.demo import PYDOC_MODULES, DemoDoc, build_demo_corpus, stdlib_modules
from index.embed import load_embedder
from index.parse import demo_source_dir
from index.search import SearchService
from index.types import Access, Principal, SearchResult
from index.versions import get_active
from store.metadata import EMPTY_METADATA, DocumentMetadata
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


def _demo_request(doc: DemoDoc, root: Path) -> DocumentRequest:
    path = Path(doc.path) if Path(doc.path).is_absolute() else root / doc.path
    return doc.doc_id, {"path": path, "title": doc.title, "access": doc.access, "source": doc.source or None}


def ensure_demo(settings: Settings, *, force: bool = False) -> dict[str, Any]:
    """Write the demo corpus (stdlib docs through pydoc, license texts) and ingest what changed."""
    started = time.perf_counter()
    root = demo_source_dir(settings)
    modules = stdlib_modules() if settings.demo_modules == "all" else PYDOC_MODULES
    docs = build_demo_corpus(root, modules=modules)
    outcomes = ingest_documents(settings, [_demo_request(doc, root) for doc in docs], delete_first=force)
    return {
        **summary(outcomes),
        "index_version": get_active(settings),
        "source_dir": str(root),
        "seconds": round(time.perf_counter() - started, 1),
    }


def prepare(settings: Settings) -> None:
    print(f"models: {prepare_models(settings)}", flush=True)
    if not settings.demo:
        return
    chunks = "~6,000" if settings.demo_modules == "all" else "~1,600"
    print(f"demo knowledge base: building and ingesting (first start embeds {chunks} chunks)...", flush=True)
    print(f"demo knowledge base: {ensure_demo(settings)}", flush=True)


def ingest_paths(
    settings: Settings,
    paths: Sequence[Path],
    *,
    tenant: str,
    readers: Sequence[str],
    metadata: DocumentMetadata = EMPTY_METADATA,
) -> dict[str, Any]:
    access = Access(tenant=tenant, readers=tuple(readers) or ("*",))
    return summary(ingest_files(settings, paths, access, metadata))


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
