"""The catalog's records (store.catalog): documents, chunk rows, filters, outcomes, commits, changes."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from store.metadata import EMPTY_METADATA, DocumentMetadata, Filters


class CatalogDocument(msgspec.Struct, frozen=True, kw_only=True):
    doc_id: str
    title: str
    source: str
    format: str
    content_hash: str
    tenant: str
    readers: tuple[str, ...]
    size_bytes: int = 0
    updated_at_ms: int = 0
    deleted: bool = False
    metadata: DocumentMetadata = EMPTY_METADATA

    def readable_by(self, tenant: str, reader_tokens: Iterable[str]) -> bool:
        return not self.deleted and tenant == self.tenant and not set(self.readers).isdisjoint(reader_tokens)


class ChunkRow(msgspec.Struct, frozen=True, kw_only=True):
    key: int  # the USearch key and Whoosh unique id of this entry
    chunk_id: str
    doc_id: str
    ordinal: int
    text: str
    context: str
    title: str
    heading: str
    tenant: str
    readers: tuple[str, ...]
    visible: bool = False

    def readable_by(self, tenant: str, reader_tokens: Iterable[str]) -> bool:
        return self.visible and tenant == self.tenant and not set(self.readers).isdisjoint(reader_tokens)


class DocumentFilter(msgspec.Struct, frozen=True, kw_only=True):
    """What `find_documents` keeps: every given field must match (a reader token is one of its readers)."""

    tenant: str | None = None
    source: str | None = None
    title_prefix: str | None = None
    reader: str | None = None
    updated_since_ms: int | None = None
    metadata: Filters = None  # the search filters (store.metadata), over the same rows


class IngestOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """The last ingest of a document id (any version): indexed, unchanged, deleted, missing or failed."""

    doc_id: str
    version: str
    status: str
    error_code: str = ""
    error: str = ""
    at_ms: int = 0


class DocumentCommit(msgspec.Struct, frozen=True, kw_only=True):
    """The switch of one document in one index version: exactly `visible` (key, ordinal) rows stay shown."""

    document: CatalogDocument
    ingest_hash: str
    visible: tuple[tuple[int, int], ...]
    text: str | None = None  # plain text for read_document; None keeps what is stored


class ChunkChange(msgspec.Struct, frozen=True, kw_only=True):
    """One journal row: a chunk that was hidden, replaced or re-permissioned (what derived caches drop)."""

    seq: int
    tenant: str
    chunk_id: str
