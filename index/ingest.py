"""Ingest: documents in, chunks switched atomically into an index version (or several, for a reindex).

    ingestor = Ingestor(settings, embedder)            # the active version; the first one is created
    report = ingestor.ingest_paths([Path("docs")], access=Access(tenant="acme", readers=("group:eng",)))
    ingestor.ingest_document("faq", data=b"...", fmt="md", title="FAQ", access=Access(tenant="acme"))
    ingestor.ingest_chunks(document, chunks)            # chunks built by the caller (tests, custom chunkers)
    ingestor.delete_document("faq")
    ingestor.close()

Entries. What the indexes store for a chunk is an *entry*, keyed by `entry_key(chunk)`: a 63-bit hash of
the chunk id AND everything indexed with it (context, title, heading, tenant, readers). An edit therefore
never rewrites an entry in place: an unchanged chunk keeps its entry (no writes, no embedding), anything
else gets a new entry, and the old one is collected after the switch. (Keying by chunk id alone would make
the new and the old version of a chunk share one USearch key and one Whoosh id, and the switch could no
longer be atomic.) A new entry whose indexed text equals an old entry's (an ACL or ordinal-only change)
reuses the stored vector instead of embedding again.

The switch, per index version, under the version's write lock, for a batch of documents:
  0. catalog: the new entries' rows, hidden;
  1. Whoosh (one writer, one commit) and USearch (one save) gain the new entries, and lose the orphans of
     an earlier interrupted batch;
  2. catalog, ONE transaction: new rows visible, replaced rows hidden, documents and ingest hashes updated;
  3. the hidden rows are collected from Whoosh and USearch, then deleted from the catalog.
A crash before 2 leaves the old chunks searchable (the new entries are hidden); after 2 the new ones (the
old entries are hidden). The next batch on that version, or `recover()`, collects whatever was left.
Re-ingesting a document whose ingest hash (content, title, format, access) is unchanged writes nothing.

Errors. A document that cannot be read, parsed, chunked or embedded is reported with its typed error and
the rest of the batch continues. A failure of the index files or the catalog (disk, lock) propagates after
the in-memory state is discarded: nothing is half-switched and retrying the call converges. With several
targets (dual-write during a reindex) each target's step is retried `TARGET_ATTEMPTS` times.

An Ingestor is used by one thread at a time; processes coordinate through the version write lock.
Embedding and parsing happen outside the lock; only the writes hold it.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt

from index.lexical import LexicalEntry, LexicalIndex
from index.types import Access, Chunk, Document, Embedder, Manifest, ParsedDocument, chunk_key
from index.vectors import VectorIndex
from index.versions import (
    check_model,
    create_version,
    file_lock,
    get_active,
    read_manifest,
    set_active,
    set_counts,
    version_path,
    write_lock,
)
from store.catalog import Catalog, CatalogDocument, ChunkRow, DocumentCommit
from store.exceptions import (
    DocentError,
    DocumentTooLarge,
    IndexError_,
    IngestError,
    InputError,
    TooManyChunks,
)  # fmt: skip
from store.settings import Settings

DOCS_PER_COMMIT = 64  # documents per Whoosh commit and USearch generation
TARGET_ATTEMPTS = 3
SPECIAL_TOKENS_RESERVE = 2  # [CLS] and [SEP]: embedders' count_tokens leaves them out
MAX_READER_TOKENS = 256
CREATE_LOCK_FILE = "create.lock"

_T = TypeVar("_T")
OutcomeStatus = Literal["indexed", "unchanged", "deleted", "missing", "failed"]
Progress = Callable[[int, int], None]  # (documents done, documents in the call)
DOCUMENT_ARGUMENTS = frozenset({"data", "path", "fmt", "title", "access", "source"})
# (document text, chunk text, deterministic context) -> the chunk's contextual prefix. Blocking; the actors
# layer builds one from the configured LLM (Anthropic's contextual-retrieval prompt, index.context).
Contextualizer = Callable[[str, str, str], str]


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


def _catalog_document(document: Document) -> CatalogDocument:
    return CatalogDocument(
        doc_id=document.doc_id, title=document.title, source=document.source, format=document.format,
        content_hash=document.content_hash, tenant=document.access.tenant,
        readers=tuple(document.access.readers), size_bytes=document.size_bytes,
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
    return digest.hexdigest()


# -- one version ----------------------------------------------------------------------------------------


class _Prepared(msgspec.Struct, kw_only=True):
    """A document chunked for one target."""

    document: Document
    ingest_hash: str
    chunks: list[Chunk]
    text: str | None


class _Plan(msgspec.Struct, kw_only=True):
    prepared: _Prepared
    entries: list[tuple[int, Chunk]]  # the document's entries after the switch, in order
    add: list[tuple[int, Chunk]]  # entries the indexes do not hold yet
    removed: list[int]  # visible entries the switch hides
    reuse: dict[int, int]  # new key -> old key with the same indexed text


class _VectorCache:
    """Vectors for the entries of one batch, and which of them were reused rather than embedded."""

    def __init__(self) -> None:
        self.vectors: dict[int, npt.NDArray[np.float32]] = {}
        self.reused: set[int] = set()


class _VersionWriter:
    """Applies batches to one version: catalog rows, Whoosh and USearch, under the version's write lock."""

    def __init__(self, settings: Settings, target: IngestTarget, catalog: Catalog) -> None:
        self.settings = settings
        self.version = target.version
        self.embedder = target.embedder
        self.catalog = catalog
        self.manifest: Manifest = read_manifest(settings, target.version)
        check_model(self.manifest, target.embedder.identity)
        directory = version_path(settings, target.version)
        self.lexical = LexicalIndex.open(directory)
        self.vectors = VectorIndex.open_writer(
            directory, ndim=self.manifest.model.dimension, dtype=self.manifest.vector_dtype
        )

    def close(self) -> None:
        self.lexical.close()

    # -- planning (no lock needed: it is checked again under the lock) -----------------------------

    def plan(self, prepared: _Prepared) -> _Plan | None:
        """None when the version already holds exactly this document."""
        doc_id = prepared.document.doc_id
        if self.catalog.ingest_hash(self.version, doc_id) == prepared.ingest_hash:
            return None
        old = {row.key: row for row in self.catalog.visible_chunks(self.version, doc_id)}
        entries = [(entry_key(chunk), chunk) for chunk in prepared.chunks]
        add = [(key, chunk) for key, chunk in entries if key not in old]
        new_keys = {key for key, _ in entries}
        by_text = {text_digest(chunk_of(row).indexed_text()): key for key, row in old.items()}
        reuse = {
            key: by_text[digest]
            for key, chunk in add
            if (digest := text_digest(chunk.indexed_text())) in by_text
        }
        removed = [key for key in old if key not in new_keys]
        return _Plan(prepared=prepared, entries=entries, add=add, removed=removed, reuse=reuse)

    def embed(self, plans: Sequence[_Plan], cache: _VectorCache) -> list[DocumentOutcome]:
        """Fill `cache` with a vector for every entry to add; documents whose embedding fails come back."""
        stored = self.vectors.get([old for plan in plans for old in plan.reuse.values()])
        for plan in plans:
            for new, old in plan.reuse.items():
                if new not in cache.vectors and old in stored:
                    cache.vectors[new] = stored[old]
                    cache.reused.add(new)
        pending = [plan for plan in plans if any(key not in cache.vectors for key, _ in plan.add)]
        try:
            self._embed_into(cache, pending)
            return []
        except DocentError:
            pass  # find the culprit(s): one document at a time
        failures = []
        for plan in pending:
            try:
                self._embed_into(cache, [plan])
            except DocentError as exc:
                failures.append(_failed(plan.prepared.document.doc_id, self.version, exc))
        return failures

    def _embed_into(self, cache: _VectorCache, plans: Sequence[_Plan]) -> None:
        todo = {key: chunk for plan in plans for key, chunk in plan.add if key not in cache.vectors}
        if not todo:
            return
        matrix = self.embedder.embed([chunk.indexed_text() for chunk in todo.values()])
        if matrix.shape != (len(todo), self.manifest.model.dimension):
            raise IndexError_(f"embedder returned {matrix.shape} for {len(todo)} texts")
        cache.vectors.update(zip(todo, np.asarray(matrix, dtype=np.float32), strict=True))

    # -- the switch (under the lock) -------------------------------------------------------------------

    def apply(self, batch: Sequence[_Prepared], cache: _VectorCache) -> list[DocumentOutcome]:
        with write_lock(self.settings, self.version):
            try:
                return self._apply_locked(batch, cache)
            except BaseException:
                self.vectors.discard_changes()
                raise

    def _apply_locked(self, batch: Sequence[_Prepared], cache: _VectorCache) -> list[DocumentOutcome]:
        self.vectors.refresh(now=True)  # another process may have saved a generation since
        outcomes: list[DocumentOutcome] = []
        plans: list[_Plan] = []
        for prepared in batch:
            plan = self.plan(prepared)
            if plan is None:
                outcomes.append(self._unchanged(prepared))
            else:
                plans.append(plan)
        failed = {o.doc_id: o for o in self.embed(plans, cache)}  # usually embedded already: a no-op
        plans = [plan for plan in plans if plan.prepared.document.doc_id not in failed]
        add = [(key, chunk) for plan in plans for key, chunk in plan.add]
        new_keys = {key for key, _ in add}
        orphans = [key for key in self.catalog.hidden_keys(self.version) if key not in new_keys]
        self.catalog.add_hidden_chunks(self.version, [row_of(key, chunk) for key, chunk in add])  # step 0
        self._write_indexes(add, cache, orphans)  # step 1
        if orphans:
            self.catalog.purge_hidden(self.version, orphans)
        self.catalog.commit_documents(self.version, [self._commit(plan) for plan in plans])  # step 2
        self.collect()  # step 3
        self._update_counts()
        outcomes.extend(self._indexed(plan, cache) for plan in plans)
        outcomes.extend(failed.values())
        return outcomes

    def _write_indexes(
        self, add: Sequence[tuple[int, Chunk]], cache: _VectorCache, delete: Sequence[int]
    ) -> None:
        if not add and not delete:
            return
        self.lexical.apply(add=[lexical_entry(key, chunk) for key, chunk in add], delete=delete)
        self.vectors.remove(delete)
        if add:
            self.vectors.add([key for key, _ in add], np.stack([cache.vectors[key] for key, _ in add]))
        self.vectors.save()

    def collect(self) -> int:
        """Drop every hidden entry from Whoosh and USearch, then from the catalog (the lock is held)."""
        hidden = self.catalog.hidden_keys(self.version)
        if hidden:
            self._write_indexes((), _VectorCache(), hidden)
            self.catalog.purge_hidden(self.version, hidden)
        return len(hidden)

    def recover(self) -> int:
        with write_lock(self.settings, self.version):
            try:
                self.vectors.refresh(now=True)
                collected = self.collect()
            except BaseException:
                self.vectors.discard_changes()
                raise
            self._update_counts()
            return collected

    def delete(self, doc_id: str) -> DocumentOutcome:
        with write_lock(self.settings, self.version):
            try:
                self.vectors.refresh(now=True)
                hidden = self.catalog.hide_document(self.version, doc_id)
                self.collect()
            except BaseException:
                self.vectors.discard_changes()
                raise
            self._update_counts()
        status: OutcomeStatus = "deleted" if hidden else "missing"
        return DocumentOutcome(doc_id=doc_id, version=self.version, status=status, removed=hidden)

    def _commit(self, plan: _Plan) -> DocumentCommit:
        prepared = plan.prepared
        return DocumentCommit(
            document=_catalog_document(prepared.document),
            ingest_hash=prepared.ingest_hash,
            visible=tuple((key, chunk.ordinal) for key, chunk in plan.entries),
            text=prepared.text,
        )

    def _update_counts(self) -> None:
        documents, chunks = self.catalog.counts(self.version)
        self.manifest = set_counts(self.settings, self.version, documents=documents, chunks=chunks)

    def _unchanged(self, prepared: _Prepared) -> DocumentOutcome:
        return DocumentOutcome(
            doc_id=prepared.document.doc_id,
            version=self.version,
            status="unchanged",
            chunks=len(prepared.chunks),
        )

    def _indexed(self, plan: _Plan, cache: _VectorCache) -> DocumentOutcome:
        return DocumentOutcome(
            doc_id=plan.prepared.document.doc_id, version=self.version, status="indexed",
            chunks=len(plan.entries), added=len(plan.add), removed=len(plan.removed),
            embedded=sum(key not in cache.reused for key, _ in plan.add),
        )  # fmt: skip


def _failed(doc_id: str, version: str, exc: DocentError) -> DocumentOutcome:
    return DocumentOutcome(
        doc_id=doc_id, version=version, status="failed", error_code=exc.code, error=exc.message
    )


# -- the ingestor ------------------------------------------------------------------------------------------


class Ingestor:
    """Ingests into `version` (default: the active one, created from `embedder` when there is none) and,
    for a reindex, into `extra_targets` too (each with its own embedder)."""

    def __init__(
        self,
        settings: Settings,
        embedder: Embedder,
        version: str | None = None,
        *,
        extra_targets: Sequence[IngestTarget] = (),
        catalog: Catalog | None = None,
        docs_per_commit: int = DOCS_PER_COMMIT,
        contextualizer: Contextualizer | None = None,
    ) -> None:
        self.settings = settings
        self.contextualizer = contextualizer
        self._owns_catalog = catalog is None
        self.catalog = catalog or Catalog.for_data_dir(settings.data_path)
        if docs_per_commit < 1:
            raise InputError("docs_per_commit must be positive")
        self.docs_per_commit = docs_per_commit
        primary = IngestTarget(version or get_active(settings) or self._create_first(embedder), embedder)
        targets = [primary, *extra_targets]
        if len({t.version for t in targets}) != len(targets):
            raise InputError("each target version may appear once")
        self.writers = [_VersionWriter(settings, target, self.catalog) for target in targets]

    def _create_first(self, embedder: Embedder) -> str:
        from index.chunk import CHUNKER_VERSION
        from index.context import context_version

        with file_lock(self.settings.index_root / CREATE_LOCK_FILE):
            active = get_active(self.settings)  # another process may have won the race
            if active is not None:
                return active
            manifest = create_version(
                self.settings,
                embedder.identity,
                chunker_version=CHUNKER_VERSION,
                context_version=context_version(self.contextualizer is not None),
            )
            set_active(self.settings, manifest.version)
            return manifest.version

    @property
    def version(self) -> str:
        return self.writers[0].version

    @property
    def versions(self) -> list[str]:
        return [w.version for w in self.writers]

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        if self._owns_catalog:
            self.catalog.close()

    def __enter__(self) -> Ingestor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- entry points ----------------------------------------------------------------------------------

    def ingest_paths(
        self, paths: Iterable[Path], *, access: Access = Access(), progress: Progress | None = None
    ) -> IngestReport:
        """Files, or directories walked for supported files; each file's doc id is `path_doc_id`."""
        files = list(expand_paths(paths))
        return self._run([(path, partial(self._load_path, path, access)) for path in files], progress)

    def ingest_document(
        self,
        doc_id: str,
        *,
        data: bytes | None = None,
        path: Path | None = None,
        fmt: str | None = None,
        title: str | None = None,
        access: Access = Access(),
        source: str | None = None,
    ) -> DocumentOutcome:
        """One document from bytes (`fmt` required) or from a path; raises its typed error on failure."""
        report = self._run(
            [(doc_id, lambda: self._load(doc_id, data, path, fmt, title, access, source))], None
        )
        return _single(report)

    def ingest_documents(
        self, requests: Sequence[tuple[str, Mapping[str, Any]]], progress: Progress | None = None
    ) -> IngestReport:
        """Many documents, each `(doc_id, ingest_document's keyword arguments)`, batched into commits."""
        loaders = [(doc_id, partial(self._load_request, doc_id, arguments)) for doc_id, arguments in requests]
        return self._run(loaders, progress)

    def _load_request(self, doc_id: str, arguments: Mapping[str, Any]) -> SourceDocument:
        unknown = set(arguments) - DOCUMENT_ARGUMENTS
        if unknown:
            raise InputError(f"unknown document arguments: {sorted(unknown)}")
        get = arguments.get
        return self._load(
            doc_id, get("data"), get("path"), get("fmt"), get("title"), get("access", Access()), get("source")
        )

    def ingest_chunks(
        self, document: Document, chunks: Sequence[Chunk], *, text: str | None = None
    ) -> DocumentOutcome:
        """A document chunked by the caller: every target gets the same chunks. Raises on a bad document."""
        report = self._run([(document.doc_id, lambda: self._given_chunks(document, chunks, text))], None)
        return _single(report)

    def ingest_many(
        self, items: Sequence[tuple[Document, Sequence[Chunk]]], progress: Progress | None = None
    ) -> IngestReport:
        """Many caller-chunked documents, batched like `ingest_paths` (for bulk loads and evaluation)."""
        loaders = [(doc.doc_id, partial(self._given_chunks, doc, chunks, None)) for doc, chunks in items]
        return self._run(loaders, progress)

    def delete_document(self, doc_id: str, *, tenant: str | None = None) -> DocumentOutcome:
        """Hide the document's chunks in every target, then collect them. `tenant` guards other tenants'."""
        if tenant is not None:
            self.catalog.check_owner(doc_id, tenant)
        outcomes = [self._with_retries(partial(writer.delete, doc_id)) for writer in self.writers]
        return outcomes[0]

    def recover(self) -> int:
        """Collect what interrupted batches left behind (hidden entries); returns how many per all targets."""
        return sum(self._with_retries(writer.recover) for writer in self.writers)

    # -- batching ------------------------------------------------------------------------------------------

    def _run(
        self, loaders: Sequence[tuple[object, Callable[[], SourceDocument]]], progress: Progress | None
    ) -> IngestReport:
        started = time.perf_counter()
        outcomes: list[DocumentOutcome] = []
        batch: list[SourceDocument] = []
        done = 0
        for name, load in loaders:
            try:
                source = load()
                self.catalog.check_owner(source.document.doc_id, source.document.access.tenant)
            except DocentError as exc:
                outcomes.append(_failed(_display_id(name), self.version, exc))
                done += 1
                continue
            if (
                any(s.document.doc_id == source.document.doc_id for s in batch)
                or len(batch) >= self.docs_per_commit
            ):
                outcomes.extend(self._apply(batch))
                done += len(batch)
                batch = []
                if progress:
                    progress(done, len(loaders))
            batch.append(source)
        if batch:
            outcomes.extend(self._apply(batch))
            done += len(batch)
        if progress:
            progress(done, len(loaders))
        primary = [o for o in outcomes if o.version == self.version]
        others = [o for o in outcomes if o.version != self.version]
        return IngestReport(
            versions=self.versions,
            documents=primary + others,
            indexed=sum(o.status == "indexed" for o in primary),
            unchanged=sum(o.status == "unchanged" for o in primary),
            failed=sum(o.status == "failed" for o in primary),
            elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
        )

    def _apply(self, batch: Sequence[SourceDocument]) -> list[DocumentOutcome]:
        outcomes: list[DocumentOutcome] = []
        for writer in self.writers:
            prepared, failures = self._prepare(writer, batch)
            cache = _VectorCache()
            plans = [plan for p in prepared if (plan := writer.plan(p)) is not None]
            failures += writer.embed(plans, cache)  # outside the lock: the slow part
            failed = {o.doc_id for o in failures}
            ready = [p for p in prepared if p.document.doc_id not in failed]
            outcomes += self._with_retries(partial(writer.apply, ready, cache))
            outcomes += failures
        return outcomes

    def _with_retries(self, step: Callable[[], _T]) -> _T:
        """Index-side failures (a lock, the catalog, a file) are retried; each step is idempotent."""
        for attempt in range(1, TARGET_ATTEMPTS + 1):
            try:
                return step()
            except IndexError_:
                if attempt == TARGET_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _prepare(
        self, writer: _VersionWriter, batch: Sequence[SourceDocument]
    ) -> tuple[list[_Prepared], list[DocumentOutcome]]:
        prepared, failures = [], []
        for source in batch:
            try:
                if source.parsed is None:
                    chunks = list(source.chunks or ())
                    digest = ingest_hash(source.document, chunks)
                else:
                    settings = self.settings
                    chunking = f"{settings.chunk_tokens}/{settings.chunk_overlap}/{SPECIAL_TOKENS_RESERVE}"
                    digest = ingest_hash(source.document, chunking=chunking)
                    # An unchanged document is not sent to a contextualizing LLM again (it is re-chunked,
                    # which is cheap, in case it changes before the commit's check under the lock).
                    unchanged = self.catalog.ingest_hash(writer.version, source.document.doc_id) == digest
                    chunks = self._chunk(writer, source, contextualize=not unchanged)
                chunks = distinct_chunks(chunks)
                prepared.append(
                    _Prepared(document=source.document, ingest_hash=digest, chunks=chunks, text=source.text)
                )
            except DocentError as exc:
                failures.append(_failed(source.document.doc_id, writer.version, exc))
        return prepared, failures

    def _chunk(
        self, writer: _VersionWriter, source: SourceDocument, *, contextualize: bool = True
    ) -> list[Chunk]:
        from index.chunk import CHUNKER_VERSION, chunk_document
        from index.context import context_version, deterministic_context

        manifest = writer.manifest
        expected = (CHUNKER_VERSION, context_version(self.contextualizer is not None))
        if (manifest.chunker_version, manifest.context_version) != expected:
            raise IndexError_(
                f"version {writer.version} was built with chunker {manifest.chunker_version} and context "
                f"{manifest.context_version}; this ingest uses {expected[0]} and {expected[1]}",
                version=writer.version,
            )
        assert source.parsed is not None
        chunks = chunk_document(
            source.parsed,
            doc_id=source.document.doc_id,
            access=source.document.access,
            max_tokens=self.settings.chunk_tokens,
            overlap=self.settings.chunk_overlap,
            count_tokens=writer.embedder.count_tokens,
            context_for=deterministic_context,
            reserve_tokens=SPECIAL_TOKENS_RESERVE,
        )
        if len(chunks) > self.settings.max_document_chunks:
            limit = self.settings.max_document_chunks
            raise TooManyChunks(f"{source.document.doc_id}: over {limit} chunks", limit=limit)
        if self.contextualizer is None or not contextualize:
            return chunks
        return self._llm_contexts(writer, source.parsed, chunks)

    def _llm_contexts(
        self, writer: _VersionWriter, parsed: ParsedDocument, chunks: list[Chunk]
    ) -> list[Chunk]:
        from index.chunk import replace_context

        assert self.contextualizer is not None
        doc_text = "\n\n".join(section.text for section in parsed.sections)
        budget = self.settings.chunk_tokens - SPECIAL_TOKENS_RESERVE
        return [
            replace_context(
                chunk,
                self.contextualizer(doc_text, chunk.text, chunk.context),
                max_tokens=budget,
                count_tokens=writer.embedder.count_tokens,
            )
            for chunk in chunks
        ]

    # -- loading -------------------------------------------------------------------------------------------

    def _load_path(self, path: Path, access: Access) -> SourceDocument:
        return self._load(path_doc_id(self.settings, path), None, path, None, None, access, None)

    def _load(
        self,
        doc_id: str,
        data: bytes | None,
        path: Path | None,
        fmt: str | None,
        title: str | None,
        access: Access,
        source: str | None,
    ) -> SourceDocument:
        from index.parse import format_for, load_source, parse_document

        check_doc_id(doc_id)
        check_access(access)
        if (data is None) == (path is None):
            raise InputError("give a document's data or its path, not both", doc_id=doc_id)
        if path is not None:
            data, path_fmt = load_source(path, self.settings)
            fmt = fmt or path_fmt
            source = source or str(Path(path).resolve())
        assert data is not None
        if len(data) > self.settings.max_document_bytes:
            raise DocumentTooLarge(f"{doc_id}: {len(data)} bytes, at most {self.settings.max_document_bytes}")
        if fmt is None:
            fmt = format_for(source or doc_id)
        parsed = parse_document(data, fmt, name=source or doc_id, max_chars=self.settings.max_document_chars)
        document = Document(
            doc_id=doc_id, title=title or parsed.title, source=source or doc_id, format=parsed.format,
            content_hash=hashlib.sha256(data).hexdigest(), access=access, size_bytes=len(data),
        )  # fmt: skip
        if title:
            parsed = msgspec.structs.replace(parsed, title=title)
        text = "\n\n".join(section.text for section in parsed.sections)
        return SourceDocument(document=document, parsed=parsed, text=text)

    def _given_chunks(self, document: Document, chunks: Sequence[Chunk], text: str | None) -> SourceDocument:
        check_doc_id(document.doc_id)
        check_access(document.access)
        ids = set()
        for chunk in chunks:
            if chunk.doc_id != document.doc_id:
                raise InputError(f"chunk {chunk.chunk_id} belongs to {chunk.doc_id}, not {document.doc_id}")
            if chunk.tenant != document.access.tenant or set(chunk.readers) != set(document.access.readers):
                raise InputError(f"chunk {chunk.chunk_id} has other access than its document")
            if chunk.chunk_id in ids:
                raise InputError(f"chunk id {chunk.chunk_id} appears twice")
            if not chunk.text.strip():
                raise InputError(f"chunk {chunk.chunk_id} has no text")
            ids.add(chunk.chunk_id)
        if not chunks:
            raise InputError(f"{document.doc_id}: no chunks")
        if text is None:
            text = "\n\n".join(chunk.text for chunk in sorted(chunks, key=lambda c: c.ordinal))
        if not document.content_hash:
            document = msgspec.structs.replace(document, content_hash=text_digest(text))
        return SourceDocument(document=document, chunks=tuple(chunks), text=text)


# -- helpers --------------------------------------------------------------------------------------------

MAX_DOC_ID_CHARS = 200  # what the read_document tool accepts


def check_doc_id(doc_id: str) -> str:
    if not isinstance(doc_id, str) or not doc_id.strip() or len(doc_id) > MAX_DOC_ID_CHARS:
        raise InputError(f"a doc id is 1..{MAX_DOC_ID_CHARS} characters", field="doc_id")
    if any(ord(c) < 0x20 for c in doc_id):
        raise InputError("a doc id may not contain control characters", field="doc_id")
    return doc_id


def expand_paths(paths: Iterable[Path]) -> Iterator[Path]:
    """Files as given; directories walked (sorted) for files of a supported format, hidden ones skipped."""
    from index.parse import FORMAT_BY_SUFFIX

    for path in paths:
        path = Path(path)
        if not path.is_dir():
            yield path
            continue
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                if not name.startswith(".") and Path(name).suffix.lower() in FORMAT_BY_SUFFIX:
                    yield Path(root) / name


def path_doc_id(settings: Settings, path: Path) -> str:
    """`<root name>/<path under it>` for a file under an allowed root, else its resolved path."""
    from index.parse import allowed_roots

    resolved = Path(path).resolve()
    for root in allowed_roots(settings):
        root = root.resolve()
        if resolved.is_relative_to(root):
            return f"{root.name}/{resolved.relative_to(root).as_posix()}"
    return resolved.as_posix()


def _display_id(name: object) -> str:
    return name.as_posix() if isinstance(name, Path) else str(name)


def _error_classes() -> dict[str, type[DocentError]]:
    classes: dict[str, type[DocentError]] = {}
    todo: list[type[DocentError]] = [DocentError]
    while todo:
        cls = todo.pop()
        classes.setdefault(cls.code, cls)
        todo.extend(cls.__subclasses__())
    return classes


def _single(report: IngestReport) -> DocumentOutcome:
    """The primary outcome of a one-document call; a failure is raised as its typed error."""
    outcome = report.documents[0]
    for o in report.documents:
        if o.status == "failed":
            raise _error_classes().get(o.error_code, IngestError)(o.error, doc_id=o.doc_id, version=o.version)
    return outcome
