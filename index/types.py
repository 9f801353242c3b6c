"""The index layer's contract: documents, chunks, principals, model identities, manifests, hits."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

import msgspec

from store.metadata import EMPTY_METADATA, DocumentMetadata

if TYPE_CHECKING:  # the web process imports these contracts and must not load numpy
    import numpy as np
    import numpy.typing as npt

EVERYONE = "*"  # a reader token: every principal of the document's tenant
# What a reader token given by a person may be (the documents API, a folder's `.docent-readers` file).
READER_PATTERN = r"^(\*|(user|group):[^,\s](?:[^,]*[^,\s])?)$"
MAX_READER_CHARS = 200
# The registered embedders (index.embed.load_embedder builds them); here so that the web process can
# validate a reindex request's model without importing index.embed (numpy, CTranslate2).
EMBEDDER_NAMES = ("minilm", "minilm-rot", "hash")

Vector: TypeAlias = "npt.NDArray[np.float32]"


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """Who is asking. Search never returns a chunk this principal may not read."""

    tenant: str
    user: str
    groups: tuple[str, ...] = ()
    roles: tuple[str, ...] = ("user",)

    def reader_tokens(self) -> tuple[str, ...]:
        return (EVERYONE, f"user:{self.user}", *(f"group:{g}" for g in self.groups))

    def can_read(self, tenant: str, readers: Sequence[str]) -> bool:
        return tenant == self.tenant and not set(readers).isdisjoint(self.reader_tokens())


class Access(msgspec.Struct, frozen=True, kw_only=True):
    """Who may read a document: its tenant, and reader tokens (`*`, `user:NAME`, `group:NAME`)."""

    tenant: str = "default"
    readers: tuple[str, ...] = (EVERYONE,)


class Section(msgspec.Struct, frozen=True, kw_only=True):
    """A run of body text under one heading path, as a parser found it."""

    headings: tuple[str, ...]
    text: str


class ParsedDocument(msgspec.Struct, frozen=True, kw_only=True):
    title: str
    format: str  # "txt" | "md" | "html" | "pdf" | "rst"
    sections: tuple[Section, ...]


class Document(msgspec.Struct, frozen=True, kw_only=True):
    """A catalog entry: one source document and the hash of the text it was ingested from."""

    doc_id: str
    title: str
    source: str  # path or URI it came from
    format: str
    content_hash: str
    access: Access = Access()
    size_bytes: int = 0
    metadata: DocumentMetadata = EMPTY_METADATA  # given at ingest; filterable (store.metadata)


class Chunk(msgspec.Struct, frozen=True, kw_only=True):
    chunk_id: str
    doc_id: str
    ordinal: int
    text: str  # what a user is shown and what citations quote
    context: str  # contextual prefix: embedded and BM25-indexed, never shown as the chunk's text
    title: str
    heading: str  # heading path joined with " > "
    tenant: str
    readers: tuple[str, ...]
    n_tokens: int = 0

    @property
    def key(self) -> int:
        return chunk_key(self.chunk_id)

    def indexed_text(self) -> str:
        """What the embedder and BM25 see: the context prefix, then the chunk."""
        return f"{self.context}\n\n{self.text}" if self.context else self.text


def make_chunk_id(doc_id: str, text: str, occurrence: int = 0) -> str:
    """Stable id from the document id and the chunk's content (and which repeat of it this is)."""
    digest = hashlib.sha256(f"{doc_id}\x00{occurrence}\x00{text}".encode()).hexdigest()
    return digest[:32]


def chunk_key(chunk_id: str) -> int:
    """The 63-bit USearch key of a chunk id (hex digest prefix)."""
    return int(chunk_id[:16], 16) & 0x7FFF_FFFF_FFFF_FFFF


class ModelIdentity(msgspec.Struct, frozen=True, kw_only=True):
    """What a vector space is: two identities that differ must never share an index."""

    name: str
    weights_sha256: str
    dimension: int
    tokenizer_sha256: str


IndexState = Literal["building", "validating", "active", "retired", "rejected"]


class Manifest(msgspec.Struct, kw_only=True):
    version: str
    model: ModelIdentity
    vector_dtype: str
    chunker_version: str
    context_version: str
    created_at_ms: int
    lexical_version: str = "bm25f-fields-1"  # index.lexical.LEXICAL_VERSION; older manifests lack it
    state: IndexState = "building"
    documents: int = 0
    chunks: int = 0


class Embedder(Protocol):
    """An embedding model. Vectors are float32, L2-normalised, shape (dimension,) or (n, dimension)."""

    @property
    def identity(self) -> ModelIdentity: ...

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...

    def count_tokens(self, text: str) -> int: ...


class Hit(msgspec.Struct, kw_only=True):
    chunk_id: str
    doc_id: str
    title: str
    heading: str
    text: str
    score: float
    dense_rank: int | None = None  # 1-based rank in the USearch list, None if absent
    bm25_rank: int | None = None  # 1-based rank in the Whoosh list, None if absent
    rerank_score: float | None = None


class SearchResult(msgspec.Struct, kw_only=True):
    query: str
    index_version: str
    hits: list[Hit]
    timings_ms: dict[str, float] = {}
    # when a stage started, ms after the search did (the stages after it ran back to back): a trace's spans
    stage_starts_ms: dict[str, float] = {}
