"""The SQLite catalog: the visibility switch, ACL lookups, purges, and refusals that change nothing."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from store.catalog import Catalog
from store.catalog_types import CatalogDocument, ChunkRow, DocumentCommit
from store.exceptions import ForbiddenError, IndexError_, InputError

V = "v1"


def _doc(doc_id: str = "d1", tenant: str = "acme", readers: tuple[str, ...] = ("*",)) -> CatalogDocument:
    return CatalogDocument(
        doc_id=doc_id, title=f"Title {doc_id}", source=f"/src/{doc_id}", format="md", content_hash="h",
        tenant=tenant, readers=readers, size_bytes=10,
    )  # fmt: skip


def _row(key: int, doc_id: str = "d1", tenant: str = "acme", readers: tuple[str, ...] = ("*",)) -> ChunkRow:
    return ChunkRow(
        key=key, chunk_id=f"c{key}", doc_id=doc_id, ordinal=0, text=f"text {key}", context="ctx", title="T",
        heading="H", tenant=tenant, readers=readers,
    )  # fmt: skip


def _commit(
    doc: CatalogDocument, keys: list[int], digest: str = "i1", text: str | None = "body"
) -> DocumentCommit:
    return DocumentCommit(
        document=doc, ingest_hash=digest, visible=tuple((k, n) for n, k in enumerate(keys)), text=text
    )


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return Catalog(tmp_path / "catalog.sqlite")


def test_switch_shows_new_rows_and_hides_old_ones_in_one_commit(catalog: Catalog) -> None:
    doc = _doc()
    catalog.add_hidden_chunks(V, [_row(1), _row(2)])
    assert catalog.chunk_rows(V, [1, 2]) == {} and sorted(catalog.hidden_keys(V)) == [1, 2]
    catalog.commit_documents(V, [_commit(doc, [1, 2])])
    assert sorted(catalog.chunk_rows(V, [1, 2])) == [1, 2]
    assert catalog.ingest_hash(V, "d1") == "i1" and catalog.counts(V) == (1, 2)
    assert catalog.document_text("d1") == "body" and catalog.get_document("d1") is not None

    catalog.add_hidden_chunks(V, [_row(3)])
    catalog.commit_documents(V, [_commit(doc, [2, 3], digest="i2", text=None)])  # 1 replaced by 3
    assert sorted(catalog.chunk_rows(V, [1, 2, 3])) == [2, 3]
    assert catalog.hidden_keys(V) == [1]
    assert [r.key for r in catalog.visible_chunks(V, "d1")] == [2, 3]
    assert catalog.document_text("d1") == "body"  # None keeps the stored text
    assert catalog.purge_hidden(V, [1, 2]) == 1  # visible rows are never purged
    assert catalog.hidden_keys(V) == [] and catalog.counts(V) == (1, 2)
    assert catalog.counts("v2") == (0, 0)  # versions are independent


def test_commit_of_unrecorded_rows_is_refused_and_changes_nothing(catalog: Catalog) -> None:
    catalog.add_hidden_chunks(V, [_row(1)])
    catalog.commit_documents(V, [_commit(_doc(), [1])])
    other = _doc("d2")
    catalog.add_hidden_chunks(V, [_row(5, "d2")])
    with pytest.raises(IndexError_):
        # d2 is fine, d1 names a key that was never recorded: the whole transaction rolls back
        catalog.commit_documents(V, [_commit(other, [5]), _commit(_doc(), [1, 99], digest="i2")])
    assert catalog.ingest_hash(V, "d2") is None and catalog.get_document("d2") is None
    assert catalog.ingest_hash(V, "d1") == "i1"
    assert sorted(catalog.chunk_rows(V, [1, 5])) == [1]


def test_readable_keys_apply_visibility_tenant_and_readers(catalog: Catalog) -> None:
    catalog.add_hidden_chunks(
        V,
        [_row(1), _row(2, readers=("group:board",)), _row(3, "d2", tenant="globex"), _row(4)],
    )
    catalog.commit_documents(V, [_commit(_doc(), [1, 2]), _commit(_doc("d2", tenant="globex"), [3])])
    # key 4 stays hidden (an unfinished switch)
    assert catalog.readable_keys(V, [1, 2, 3, 4, 77], "acme", ("*", "user:u")) == {1}
    assert catalog.readable_keys(V, [1, 2, 3, 4], "acme", ("*", "group:board")) == {1, 2}
    assert catalog.readable_keys(V, [1, 2, 3, 4], "globex", ("*",)) == {3}
    assert catalog.readable_keys(V, [1, 2, 3, 4], "acme", ()) == set()
    many = list(range(10_000, 11_200))  # more keys than one SQL batch
    assert catalog.readable_keys(V, [*many, 1], "acme", ("*",)) == {1}


def test_hide_document_then_purge(catalog: Catalog) -> None:
    catalog.add_hidden_chunks(V, [_row(1), _row(2)])
    catalog.commit_documents(V, [_commit(_doc(), [1, 2])])
    assert catalog.hide_document(V, "d1") == 2
    assert catalog.chunk_rows(V, [1, 2]) == {} and catalog.ingest_hash(V, "d1") is None
    assert catalog.document_text("d1") is None
    document = catalog.get_document("d1")
    assert document is not None and document.deleted
    assert not document.readable_by("acme", ("*",))
    assert catalog.list_documents() == [] and len(catalog.list_documents(include_deleted=True)) == 1
    assert catalog.purge_hidden(V, catalog.hidden_keys(V)) == 2
    assert catalog.hide_document(V, "d1") == 0


def test_document_ownership_listing_and_bad_input(catalog: Catalog) -> None:
    catalog.add_hidden_chunks(V, [_row(1)])
    catalog.commit_documents(V, [_commit(_doc(), [1])])
    catalog.check_owner("d1", "acme")
    catalog.check_owner("new-doc", "globex")
    with pytest.raises(ForbiddenError):
        catalog.check_owner("d1", "globex")
    assert [d.doc_id for d in catalog.list_documents(tenant="acme")] == ["d1"]
    assert catalog.list_documents(tenant="globex") == []
    with pytest.raises(InputError):
        catalog.list_documents(limit=0)
    with pytest.raises(InputError):
        catalog.add_hidden_chunks("", [_row(2)])
    assert catalog.hidden_keys(V) == []


def test_connections_are_per_thread_and_see_each_others_commits(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "c.sqlite")
    errors: list[BaseException] = []

    def writer(start: int) -> None:
        try:
            for n in range(start, start + 20):
                catalog.add_hidden_chunks(V, [_row(n, f"d{n}")])
                catalog.commit_documents(V, [_commit(_doc(f"d{n}"), [n])])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(start,)) for start in (0, 100, 200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert catalog.counts(V) == (60, 60)
    reopened = Catalog(tmp_path / "c.sqlite")
    assert len(reopened.list_documents(limit=1000)) == 60
    catalog.close()
    reopened.close()
    with pytest.raises(IndexError_):
        catalog.counts(V)  # a closed catalog refuses instead of reopening behind the caller's back


def _open_at(path: str, start: float, results: Any) -> None:
    while time.time() < start:  # every process reaches SQLite's first open together
        pass
    try:
        Catalog(Path(path)).close()
        results.put("ok")
    except IndexError_ as exc:
        results.put(str(exc))


def test_processes_opening_a_new_catalog_together_all_get_it(tmp_path: Path) -> None:
    # The switch to WAL raced another process's first open and failed at once ("database is locked",
    # no busy handler): 6 of 320 such opens, before the switch was retried.
    context = multiprocessing.get_context("fork")
    for attempt in range(10):
        results = context.Queue()
        start = time.time() + 0.3
        path = str(tmp_path / f"c{attempt}" / "catalog.sqlite")
        openers = [context.Process(target=_open_at, args=(path, start, results)) for _ in range(6)]
        for opener in openers:
            opener.start()
        outcomes = [results.get(timeout=30) for _ in openers]
        for opener in openers:
            opener.join()
        assert outcomes == ["ok"] * len(openers)
