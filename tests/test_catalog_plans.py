"""The catalog's per-document reads stay per-document: the work does not grow with the version's rows."""

from __future__ import annotations

from pathlib import Path

from store.catalog import Catalog
from store.catalog_types import CatalogDocument, ChunkRow, DocumentCommit

V = "v1"


def _fill(catalog: Catalog, documents: int, chunks_each: int) -> None:
    rows, commits = [], []
    for d in range(documents):
        doc = CatalogDocument(
            doc_id=f"d{d}",
            title="T",
            source="s",
            format="md",
            content_hash="h",
            tenant="acme",
            readers=("*",),
        )
        keys = [d * chunks_each + n + 1 for n in range(chunks_each)]
        rows += [
            ChunkRow(
                key=key,
                chunk_id=f"c{key}",
                doc_id=doc.doc_id,
                ordinal=n,
                text="x" * 200,
                context="",
                title="T",
                heading="",
                tenant="acme",
                readers=("*",),
            )
            for n, key in enumerate(keys)
        ]
        commits.append(
            DocumentCommit(document=doc, ingest_hash="i", visible=tuple((k, n) for n, k in enumerate(keys)))
        )
    catalog.add_hidden_chunks(V, rows)
    catalog.commit_documents(V, commits)


def _steps(catalog: Catalog, doc_id: str) -> int:
    """SQLite virtual-machine steps (in thousands) that visible_chunks takes for one document."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    db = catalog._connection()  # the calling thread's connection: the one visible_chunks uses
    db.set_progress_handler(count, 1000)
    try:
        assert len(catalog.visible_chunks(V, doc_id)) == 3
    finally:
        db.set_progress_handler(None, 0)
    return steps[0]


def test_visible_chunks_of_one_document_does_not_scan_the_version(tmp_path: Path) -> None:
    small, large = Catalog(tmp_path / "small.sqlite"), Catalog(tmp_path / "large.sqlite")
    _fill(small, 10, 3)
    _fill(large, 4000, 3)  # 12,000 visible rows: a scan of them is thousands of VM steps per document
    try:
        assert _steps(large, "d1234") <= _steps(small, "d5") + 1
    finally:
        small.close()
        large.close()
