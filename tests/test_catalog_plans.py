"""The catalog's per-document reads stay per-document: the work does not grow with the version's rows."""

from __future__ import annotations

from collections.abc import Callable
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
    return _steps_of(catalog, lambda: len(catalog.visible_chunks(V, doc_id)) == 3)


def _steps_of(catalog: Catalog, call: Callable[[], bool]) -> int:
    """SQLite virtual-machine steps (in thousands) of one call on the calling thread's connection."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    db = catalog._connection()  # the calling thread's connection: the one visible_chunks uses
    db.set_progress_handler(count, 1000)
    try:
        assert call()
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


def test_a_document_changed_in_every_version_does_not_scan_the_catalog(tmp_path: Path) -> None:
    small, large = Catalog(tmp_path / "small.sqlite"), Catalog(tmp_path / "large.sqlite")
    _fill(small, 10, 3)
    _fill(large, 4000, 3)
    try:
        for catalog, doc_id in ((small, "d5"), (large, "d1234")):
            catalog.get_document(doc_id)  # opens the thread's connection before counting
        readers = [
            _steps_of(c, lambda c=c, d=d: c.set_readers(d, ["team"]) == 3)
            for c, d in ((small, "d5"), (large, "d1234"))
        ]
        deletes = [
            _steps_of(c, lambda c=c, d=d: c.delete_everywhere(d) == 3)
            for c, d in ((small, "d6"), (large, "d1235"))
        ]
        assert readers[1] <= readers[0] + 1 and deletes[1] <= deletes[0] + 1
    finally:
        small.close()
        large.close()
