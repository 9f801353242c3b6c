"""index.access: the access map agrees with the catalog's own ACL query and follows every change at once."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from index.access import AccessFilter, AccessMap
from index.keys import as_keys
from index.types import Principal
from store.catalog import Catalog
from store.catalog_types import CatalogDocument, ChunkRow, DocumentCommit

V = "v1"
TOKENS = ("*", "user:ann", "group:board", "group:ops")
TENANTS = ("acme", "globex")


def _document(doc_id: str, tenant: str, readers: tuple[str, ...]) -> CatalogDocument:
    return CatalogDocument(
        doc_id=doc_id, title=doc_id, source=doc_id, format="md", content_hash="h", tenant=tenant,
        readers=readers,
    )  # fmt: skip


def _row(doc: CatalogDocument, key: int, ordinal: int) -> ChunkRow:
    return ChunkRow(
        key=key, chunk_id=f"c{key}", doc_id=doc.doc_id, ordinal=ordinal, text="t", context="", title="T",
        heading="", tenant=doc.tenant, readers=doc.readers,
    )  # fmt: skip


def _rows(doc: CatalogDocument, keys: list[int]) -> list[ChunkRow]:
    return [_row(doc, key, n) for n, key in enumerate(keys)]


def _ingest(catalog: Catalog, doc: CatalogDocument, keys: list[int], hidden: tuple[int, ...] = ()) -> None:
    catalog.add_hidden_chunks(V, _rows(doc, [*keys, *hidden]))
    commit = DocumentCommit(document=doc, ingest_hash="i", visible=tuple((k, n) for n, k in enumerate(keys)))
    catalog.commit_documents(V, [commit])


def _agrees(catalog: Catalog, access: AccessMap, keys: list[int]) -> None:
    for tenant in (*TENANTS, "initech"):
        for size in range(len(TOKENS) + 1):
            tokens = TOKENS[:size]
            expected = catalog.readable_keys(V, keys, tenant, tokens)
            mask = access.snapshot().allowed(as_keys(keys), tenant, frozenset(tokens))
            assert {key for key, ok in zip(keys, mask.tolist(), strict=True) if ok} == expected


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return Catalog(tmp_path / "catalog.sqlite")


def test_the_map_agrees_with_readable_keys_through_every_kind_of_change(catalog: Catalog) -> None:
    rng = random.Random(7)
    access = AccessMap(catalog, V)
    probe = list(range(1, 260))
    _agrees(catalog, access, probe)  # empty catalog
    for d in range(40):
        readers = tuple(rng.sample(TOKENS, rng.randint(1, 2)))
        doc = _document(f"d{d}", rng.choice(TENANTS), readers)
        _ingest(catalog, doc, [d * 5 + 1, d * 5 + 2, d * 5 + 3], (d * 5 + 4,))
    _agrees(catalog, access, probe)
    catalog.set_readers("d3", ("group:ops",))
    _agrees(catalog, access, probe)
    catalog.hide_document(V, "d4")
    catalog.delete_everywhere("d5")
    _agrees(catalog, access, probe)
    _ingest(catalog, _document("d6", "globex", ("user:ann",)), [250, 251])  # replaced: old keys hidden
    _agrees(catalog, access, probe)
    assert access.snapshot() is access.snapshot()  # no change: the same arrays


def test_a_change_from_another_process_is_seen_by_the_next_query(catalog: Catalog, tmp_path: Path) -> None:
    _ingest(catalog, _document("d1", "acme", ("group:board",)), [1, 2])
    access = AccessMap(catalog, V)
    keys = as_keys([1, 2])
    assert not access.snapshot().allowed(keys, "acme", frozenset({"*"})).any()
    script = (
        "from store.catalog import Catalog; "
        f"Catalog({str(tmp_path / 'catalog.sqlite')!r}).set_readers('d1', ('*',))"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).resolve().parent.parent)
    assert access.snapshot().allowed(keys, "acme", frozenset({"*"})).all()


def test_the_filter_from_the_map_equals_the_filter_from_the_catalog(catalog: Catalog) -> None:
    _ingest(catalog, _document("d1", "acme", ("*",)), [1, 2])
    access = AccessMap(catalog, V)
    ann = Principal(tenant="acme", user="ann")
    plain = AccessFilter(catalog, V, ann, access=access)
    assert plain(as_keys([2, 1, 3])).tolist() == [True, True, False]
    assert plain(as_keys([])).tolist() == []
    assert np.array_equal(AccessFilter(catalog, V, ann)(as_keys([2, 1, 3])), plain(as_keys([2, 1, 3])))
