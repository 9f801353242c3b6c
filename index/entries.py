"""What ingest stores for a chunk (its entry), and the typed results of an ingest.

An entry is keyed by `entry_key(chunk)`: a 63-bit hash of the chunk id AND everything indexed with it, so an
edit never rewrites an entry in place (see index.ingest). `distinct_chunks` drops a document's repeated
chunks; `check_access` refuses reader tokens that Whoosh keywords or catalog JSON would read ambiguously.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

import msgspec

from index.lexical import LexicalEntry
from index.types import Access, Chunk, Document, Embedder, ParsedDocument, chunk_key
from store.catalog_types import CatalogDocument, ChunkRow
from store.exceptions import (
    InputError,
)  # fmt: skip
from store.metadata import encode_metadata

MAX_READER_TOKENS = 256
OutcomeStatus = Literal["indexed", "unchanged", "deleted", "missing", "failed"]


class DocumentOutcome(msgspec.Struct, kw_only=True):
    doc_id: str
    version: str
    status: OutcomeStatus
    chunks: int = 0  # visible chunks after the call
    added: int = 0  # entries written
    removed: int = 0  # entries collected
    embedded: int = 0  # entries that needed the embedder (the rest reused a stored vector)
    error_code: str = ""
    error: str = ""


class IngestReport(msgspec.Struct, kw_only=True):
    versions: list[str]
    documents: list[DocumentOutcome]  # the primary version's outcomes, then any other target's
    indexed: int = 0  # counts over the primary version
    unchanged: int = 0
    failed: int = 0
    elapsed_ms: float = 0.0

    @property
    def errors(self) -> list[DocumentOutcome]:
        return [d for d in self.documents if d.status == "failed"]


class IngestTarget:
    """One index version and the embedder whose vector space it is."""

    def __init__(self, version: str, embedder: Embedder) -> None:
        self.version = version
        self.embedder = embedder


class SourceDocument(msgspec.Struct, frozen=True, kw_only=True):
    """A document ready to chunk: catalog metadata and either parsed sections or the caller's chunks."""

    document: Document
    parsed: ParsedDocument | None = None
    chunks: tuple[Chunk, ...] | None = None
    text: str | None = None  # plain text shown by read_document


# -- entries -----------------------------------------------------------------------------------------


def entry_key(chunk: Chunk) -> int:
    """The key of what is indexed for a chunk: its id and everything indexed or enforced with it."""
    fields = (
        chunk.chunk_id, chunk.title, chunk.heading, chunk.tenant, ",".join(sorted(set(chunk.readers))),
        chunk.context, chunk.text,
    )  # fmt: skip
    return chunk_key(hashlib.sha256("\x00".join(fields).encode()).hexdigest())


def chunk_of(row: ChunkRow) -> Chunk:
    return Chunk(
        chunk_id=row.chunk_id, doc_id=row.doc_id, ordinal=row.ordinal, text=row.text, context=row.context,
        title=row.title, heading=row.heading, tenant=row.tenant, readers=row.readers,
    )  # fmt: skip


def row_of(key: int, chunk: Chunk) -> ChunkRow:
    return ChunkRow(
        key=key, chunk_id=chunk.chunk_id, doc_id=chunk.doc_id, ordinal=chunk.ordinal, text=chunk.text,
        context=chunk.context, title=chunk.title, heading=chunk.heading, tenant=chunk.tenant,
        readers=tuple(chunk.readers),
    )  # fmt: skip


def lexical_entry(key: int, chunk: Chunk) -> LexicalEntry:
    return LexicalEntry(
        key=key, chunk_id=chunk.chunk_id, doc_id=chunk.doc_id, tenant=chunk.tenant,
        readers=tuple(sorted(set(chunk.readers))), title=chunk.title, heading=chunk.heading,
        body=chunk.indexed_text(),
    )  # fmt: skip


def distinct_chunks(chunks: Sequence[Chunk]) -> list[Chunk]:
    """The chunks without repeats of an earlier chunk's text (whitespace aside) in the same document.

    A document that repeats a passage thousands of times (a generated PDF, a pasted log) would otherwise
    fill both indexes with identical entries: they crowd every other result out of BM25 and, all at one
    point, wreck the HNSW graph's neighbourhoods for every tenant sharing it (issue 11, finding 4).
    """
    seen: set[str] = set()
    kept = []
    for chunk in chunks:
        text = " ".join(chunk.text.split())
        if text not in seen:
            seen.add(text)
            kept.append(chunk)
    return kept


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def check_access(access: Access) -> Access:
    """Reader tokens become Whoosh keywords and catalog JSON: refuse anything ambiguous in either."""
    if not access.tenant or access.tenant != access.tenant.strip() or "," in access.tenant:
        raise InputError("a tenant must be a non-empty name without commas or edge spaces", field="tenant")
    if not access.readers or len(access.readers) > MAX_READER_TOKENS:
        raise InputError(f"a document needs 1..{MAX_READER_TOKENS} reader tokens", field="readers")
    for token in access.readers:
        if not token or "," in token or token != token.strip():
            raise InputError(f"bad reader token {token!r}", field="readers")
    return access


def catalog_document(document: Document) -> CatalogDocument:
    return CatalogDocument(
        doc_id=document.doc_id, title=document.title, source=document.source, format=document.format,
        content_hash=document.content_hash, tenant=document.access.tenant,
        readers=tuple(document.access.readers), size_bytes=document.size_bytes, metadata=document.metadata,
    )  # fmt: skip


def ingest_hash(document: Document, chunks: Sequence[Chunk] | None = None, *, chunking: str = "") -> str:
    """What decides a document's entries in a version: its content, title, format and access, and either
    the chunks themselves or the chunking settings (the chunker, context and tokenizer are fixed per
    version by its manifest)."""
    digest = hashlib.sha256(
        msgspec.json.encode(
            (document.content_hash, document.title, document.format, document.access.tenant,
             sorted(set(document.access.readers)), chunking)
        )
    )  # fmt: skip
    for chunk in chunks or ():
        digest.update(f"\x00{entry_key(chunk)}:{chunk.ordinal}".encode())
    if not document.metadata.is_empty():  # a metadata change re-commits the row (entries are unchanged)
        digest.update(b"\x00metadata:" + encode_metadata(document.metadata).encode())
    return digest.hexdigest()
