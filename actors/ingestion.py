"""Every ingest the product does (uploads, `docent ingest`, the demo) goes through here: the dual writer.

`index.reindex.DualWriter` applies each document to the active index version and, while a rebuild runs,
to the version being built (each with its own model), so a cutover never loses a document added meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from actors.contextualize import make_contextualizer
from actors.golden_schedule import after_ingest
from index.ingest import DocumentOutcome, expand_paths, path_doc_id
from index.reindex.dualwrite import DualWriter
from index.types import Access
from store import metrics
from store.catalog_types import IngestOutcome
from store.metadata import EMPTY_METADATA, DocumentMetadata
from store.redis import sync_client
from store.settings import Settings

DocumentRequest = tuple[str, dict[str, Any]]  # doc id, Ingestor.ingest_document keyword arguments
Progress = Callable[[Sequence[DocumentOutcome]], None]  # the outcomes of each committed slice
CHANGED = frozenset({"indexed", "deleted"})  # outcomes that change what the golden sets measure
PROGRESS_SLICE = 64  # documents per slice when a caller follows progress (one commit per target each)


def ingest_documents(
    settings: Settings,
    requests: Iterable[DocumentRequest],
    *,
    delete_first: bool = False,
    progress: Progress | None = None,
) -> list[DocumentOutcome]:
    """Ingest the documents into every current version in batched commits; a failing document is an
    outcome and does not stop the rest. With `progress`, the requests go in slices of PROGRESS_SLICE, each
    committed and its outcomes recorded before `progress` hears of it."""
    client = sync_client(settings.redis_url) if settings.redis_url else None
    requests = list(requests)
    size = PROGRESS_SLICE if progress is not None else max(1, len(requests))
    outcomes: list[DocumentOutcome] = []
    try:
        with DualWriter(settings, client, contextualizer=make_contextualizer(settings)) as writer:
            if delete_first:
                for doc_id, _ in requests:
                    writer.delete_document(doc_id)
            for start in range(0, len(requests), size):
                done = writer.ingest_documents(requests[start : start + size])
                writer.catalog.record_outcomes(outcome_of(o) for o in done)
                metrics.observe_ingest(
                    (o.status for o in done),
                    embedded=sum(o.embedded for o in done), written=sum(o.added for o in done),
                )  # fmt: skip
                outcomes.extend(done)
                if progress is not None:
                    progress(done)
        changed = sum(o.status in CHANGED for o in outcomes)
        after_ingest(settings, client, changed)  # a batch of golden_recall_after_docs: re-measured
        return outcomes
    finally:
        if client is not None:
            client.close()


def outcome_of(outcome: DocumentOutcome) -> IngestOutcome:
    """What the documents API shows as a document's last ingest."""
    return IngestOutcome(doc_id=outcome.doc_id, version=outcome.version, status=outcome.status,
                         error_code=outcome.error_code, error=outcome.error)  # fmt: skip


def ingest_files(
    settings: Settings, paths: Sequence[Path], access: Access, metadata: DocumentMetadata = EMPTY_METADATA
) -> list[DocumentOutcome]:
    """Files, or directories walked for supported files; each file's doc id comes from its path, and each
    gets the same metadata (validated: store.metadata)."""
    requests = [
        (path_doc_id(settings, path), {"path": path, "access": access, "metadata": metadata})
        for path in expand_paths(paths)
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
