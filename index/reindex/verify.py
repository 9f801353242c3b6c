"""Verification: does a version hold exactly the catalog's live documents (ids, counts, content hashes)?

The check every cutover and rollback passes first; `live_documents` is the catalog view it (and the
build) compares against. Files and SQLite only: no model, no index.
"""

from __future__ import annotations

import msgspec

from index.reindex.ledger import Ledger
from store.catalog import Catalog
from store.catalog_types import CatalogDocument
from store.settings import Settings

PAGE = 1000


def live_documents(catalog: Catalog) -> dict[str, CatalogDocument]:
    """Every live (not deleted) document of every tenant."""
    found: dict[str, CatalogDocument] = {}
    offset = 0
    while True:
        page = catalog.list_documents(limit=PAGE, offset=offset)
        found.update((d.doc_id, d) for d in page)
        if len(page) < PAGE:
            return found
        offset += len(page)


class Verification(msgspec.Struct, kw_only=True):
    version: str
    documents: int  # the catalog's live documents
    held: int  # documents the version holds
    missing: list[str] = []
    extra: list[str] = []
    stale: list[str] = []  # held, but built from other content than the catalog's
    hidden: int = 0  # entries of an unfinished switch

    @property
    def exact(self) -> bool:
        return not (self.missing or self.extra or self.stale or self.hidden) and self.documents == self.held

    def summary(self) -> str:
        return (
            f"{self.version}: catalog {self.documents} documents, version {self.held}; "
            f"missing {self.missing[:5]}, extra {self.extra[:5]}, stale {self.stale[:5]}, "
            f"hidden {self.hidden}"
        )


def verify(settings: Settings, catalog: Catalog, version: str, *, strict_ledger: bool = True) -> Verification:
    """Does `version` hold exactly the catalog's live documents (ids, counts and content hashes)?

    `strict_ledger=False` accepts documents without a ledger entry (a version built before ledgers
    existed); a ledger entry that disagrees with the catalog is always stale."""
    live = {doc_id: doc.content_hash for doc_id, doc in live_documents(catalog).items()}
    held = set(catalog.version_doc_ids(version))
    ledger = Ledger(settings, version).all()
    counted, _chunks = catalog.counts(version)
    stale = sorted(
        doc_id
        for doc_id in held & live.keys()
        if (doc_id in ledger or strict_ledger) and ledger.get(doc_id) != live[doc_id]
    )
    return Verification(
        version=version, documents=len(live), held=counted, missing=sorted(live.keys() - held),
        extra=sorted(held - live.keys()), stale=stale, hidden=len(catalog.hidden_keys(version)),
    )  # fmt: skip


def seed_ledger(settings: Settings, catalog: Catalog, version: str) -> None:
    """Record what a version holds now as built from the catalog's content (a version that was the
    reference until a cutover has no ledger entries of its own), so rollback checks can verify it."""
    live = live_documents(catalog)
    held = set(catalog.version_doc_ids(version))
    ledger = Ledger(settings, version)
    known = ledger.all()
    ledger.mark_many([(d, live[d].content_hash, 0) for d in held & live.keys() if d not in known])
