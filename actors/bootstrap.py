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

from actors.demo_background import demo_request
from actors.demo_background import schedule as schedule_demo_rest
from actors.ingestion import ingest_documents, ingest_files, summary
from index.demo import PYDOC_MODULES, build_demo_corpus, stdlib_modules
from index.embed import load_embedder
from index.parse import demo_source_dir
from index.search import SearchService
from index.types import Access, Principal, SearchResult
from index.versions import get_active
from store.metadata import EMPTY_METADATA, DocumentMetadata
from store.redis import sync_client
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


def ensure_demo(
    settings: Settings, *, force: bool = False, modules: Sequence[str] | None = None
) -> dict[str, Any]:
    """Write the demo corpus (stdlib docs through pydoc, license texts) and ingest what changed; by default
    the pages of `settings.demo_modules`, all of them here and now."""
    started = time.perf_counter()
    root = demo_source_dir(settings)
    if modules is None:
        modules = stdlib_modules() if settings.demo_modules == "all" else PYDOC_MODULES
    docs = build_demo_corpus(root, modules=modules)
    outcomes = ingest_documents(settings, [demo_request(doc, root) for doc in docs], delete_first=force)
    return {
        **summary(outcomes),
        "index_version": get_active(settings),
        "source_dir": str(root),
        "seconds": round(time.perf_counter() - started, 1),
    }


def prepare(settings: Settings) -> None:
    """`docent run`'s first-start work: the models and the core demo pages now; with `all`, the rest of
    the standard library is queued for the ingest worker (actors/demo_job.py, progress in /admin)."""
    print(f"models: {prepare_models(settings)}", flush=True)
    if not settings.demo:
        return
    print("demo knowledge base: building and ingesting the core pages (first start embeds ~1,600 chunks)...",
          flush=True)  # fmt: skip
    print(f"demo knowledge base: {ensure_demo(settings, modules=PYDOC_MODULES)}", flush=True)
    if settings.demo_modules == "all" and not settings.redis_url:
        print("demo knowledge base: no Redis, so the rest of the standard library is not queued", flush=True)
    elif settings.demo_modules == "all":
        with sync_client(settings.redis_url) as client:
            record = schedule_demo_rest(settings, client)
        state = "all ingested" if record.status == "done" else "ingesting in the background (see /admin)"
        print(f"demo knowledge base: the rest of the standard library: {state}", flush=True)


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
