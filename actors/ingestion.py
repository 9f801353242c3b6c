"""Every ingest the product does (uploads, `docent ingest`, the demo) goes through here: the dual writer.

`index.reindex.DualWriter` applies each document to the active index version and, while a rebuild runs,
to the version being built (each with its own model), so a cutover never loses a document added meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import redis

from actors.contextualize import make_contextualizer
from index.ingest import DocumentOutcome, expand_paths, path_doc_id
from index.reindex import DualWriter
from index.types import Access
from store.exceptions import DocentError
from store.settings import Settings

log = logging.getLogger(__name__)

DocumentRequest = tuple[str, dict[str, Any]]  # doc id, Ingestor.ingest_document keyword arguments


def _failed(doc_id: str, exc: DocentError) -> DocumentOutcome:
    return DocumentOutcome(doc_id=doc_id, version="", status="failed", error_code=exc.code, error=exc.message)


def ingest_documents(
    settings: Settings, requests: Iterable[DocumentRequest], *, delete_first: bool = False
) -> list[DocumentOutcome]:
    """Ingest each document into every current version; a failing document does not stop the rest."""
    client = redis.Redis.from_url(settings.redis_url) if settings.redis_url else None
    outcomes = []
    try:
        with DualWriter(settings, client, contextualizer=make_contextualizer(settings)) as writer:
            for doc_id, arguments in requests:
                try:
                    if delete_first:
                        writer.delete_document(doc_id)
                    outcomes.append(writer.ingest_document(doc_id, **arguments)[0])
                except DocentError as exc:
                    log.warning("ingest of %s failed: %s", doc_id, exc)
                    outcomes.append(_failed(doc_id, exc))
    finally:
        if client is not None:
            client.close()
    return outcomes


def ingest_files(settings: Settings, paths: Sequence[Path], access: Access) -> list[DocumentOutcome]:
    """Files, or directories walked for supported files; each file's doc id comes from its path."""
    requests = [
        (path_doc_id(settings, path), {"path": path, "access": access}) for path in expand_paths(paths)
    ]
    return ingest_documents(settings, requests)


def summary(outcomes: Sequence[DocumentOutcome]) -> dict[str, Any]:
    return {
        "documents": len(outcomes),
        "outcomes": {s: sum(o.status == s for o in outcomes) for s in sorted({o.status for o in outcomes})},
        "chunks": sum(o.chunks for o in outcomes),
        "embedded": sum(o.embedded for o in outcomes),
        "errors": [
            {"doc_id": o.doc_id, "code": o.error_code, "error": o.error}
            for o in outcomes
            if o.status == "failed"
        ],
    }
