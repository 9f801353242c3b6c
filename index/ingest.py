"""Ingest: documents in, chunks switched atomically into an index version.

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
the in-memory state is discarded: nothing is half-switched and retrying the call converges; each version
write is retried `TARGET_ATTEMPTS` times. The entries and results live in index.entries, the per-version
writer in index.version_writer; this module is the Ingestor: loading, chunking, batching, retries.

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
from typing import Any, TypeVar

import msgspec

from index.entries import (
    DocumentOutcome,
    IngestReport,
    IngestTarget,
    SourceDocument,
    check_access,
    distinct_chunks,
    ingest_hash,
    text_digest,
)
from index.types import Access, Chunk, Document, Embedder, ParsedDocument
from index.version_writer import (
    _failed,
    _Prepared,
    _VectorCache,
    _VersionWriter,
)
from index.versions import (
    create_version,
    file_lock,
    get_active,
    set_active,
)
from store.catalog import Catalog
from store.exceptions import (
    DocentError,
    DocumentTooLarge,
    IndexError_,
    IngestError,
    InputError,
    TooManyChunks,
    error_class,
)  # fmt: skip
from store.metadata import EMPTY_METADATA, DocumentMetadata, check_metadata
from store.settings import Settings

DOCS_PER_COMMIT = 64  # documents per Whoosh commit and USearch generation
TARGET_ATTEMPTS = 3
SPECIAL_TOKENS_RESERVE = 2  # [CLS] and [SEP]: embedders' count_tokens leaves them out
CREATE_LOCK_FILE = "create.lock"

_T = TypeVar("_T")
Progress = Callable[[int, int], None]  # (documents done, documents in the call)
DOCUMENT_ARGUMENTS = frozenset({"data", "path", "fmt", "title", "access", "source", "metadata"})
# (document text, chunk text, deterministic context) -> the chunk's contextual prefix. Blocking; the actors
# layer builds one from the configured LLM (Anthropic's contextual-retrieval prompt, index.context).
Contextualizer = Callable[[str, str, str], str]


# -- the ingestor ------------------------------------------------------------------------------------------


class Ingestor:
    """Ingests into `version` (default: the active one, created from `embedder` when there is none). A
    reindex writes to two versions with two Ingestors (index.reindex.dualwrite)."""

    def __init__(
        self,
        settings: Settings,
        embedder: Embedder,
        version: str | None = None,
        *,
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
        target = IngestTarget(version or get_active(settings) or self._create_first(embedder), embedder)
        self.writer = _VersionWriter(settings, target, self.catalog)

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
        return self.writer.version

    def close(self) -> None:
        self.writer.close()
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
        metadata: DocumentMetadata = EMPTY_METADATA,
    ) -> DocumentOutcome:
        """One document from bytes (`fmt` required) or from a path; raises its typed error on failure."""
        report = self._run(
            [(doc_id, lambda: self._load(doc_id, data, path, fmt, title, access, source, metadata))], None
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
        access, metadata = get("access", Access()), get("metadata", EMPTY_METADATA)
        return self._load(
            doc_id, get("data"), get("path"), get("fmt"), get("title"), access, get("source"), metadata
        )  # fmt: skip

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

    def optimize(self) -> int:
        """After a bulk load: the lexical index merged into one segment (fewer reads per query term) and
        the vector delta folded into its base (one HNSW graph). Returns the lexical segments left."""
        return self._with_retries(self.writer.optimize)

    def delete_document(self, doc_id: str, *, tenant: str | None = None) -> DocumentOutcome:
        """Hide the document's chunks, then collect them. `tenant` guards other tenants' documents."""
        if tenant is not None:
            self.catalog.check_owner(doc_id, tenant)
        return self._with_retries(partial(self.writer.delete, doc_id))

    def resync(self, doc_id: str) -> int:
        """`_VersionWriter.resync`: the entries rewritten after a catalog-only delete or readers change."""
        return self._with_retries(partial(self.writer.resync, doc_id))

    def recover(self) -> int:
        """Collect what interrupted batches left behind (hidden entries); returns how many."""
        return self._with_retries(self.writer.recover)

    # -- batching ------------------------------------------------------------------------------------------

    def _run(
        self, loaders: Sequence[tuple[object, Callable[[], SourceDocument]]], progress: Progress | None
    ) -> IngestReport:
        started = time.perf_counter()
        outcomes: list[DocumentOutcome] = []
        batch: list[SourceDocument] = []
        in_batch: set[str] = set()  # the batch's doc ids (a scan of the batch per document was quadratic)
        done = 0
        for name, load in loaders:
            try:
                source = load()
                self.catalog.check_owner(source.document.doc_id, source.document.access.tenant)
            except DocentError as exc:
                outcomes.append(_failed(_display_id(name), self.version, exc))
                done += 1
                continue
            if source.document.doc_id in in_batch or len(batch) >= self.docs_per_commit:
                outcomes.extend(self._apply(batch))
                done += len(batch)
                batch, in_batch = [], set()
                if progress:
                    progress(done, len(loaders))
            batch.append(source)
            in_batch.add(source.document.doc_id)
        if batch:
            outcomes.extend(self._apply(batch))
            done += len(batch)
        if progress:
            progress(done, len(loaders))
        return IngestReport(
            versions=[self.version],
            documents=outcomes,
            indexed=sum(o.status == "indexed" for o in outcomes),
            unchanged=sum(o.status == "unchanged" for o in outcomes),
            failed=sum(o.status == "failed" for o in outcomes),
            elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
        )

    def _apply(self, batch: Sequence[SourceDocument]) -> list[DocumentOutcome]:
        writer = self.writer
        prepared, failures = self._prepare(writer, batch)
        cache = _VectorCache()
        plans = [plan for p in prepared if (plan := writer.plan(p)) is not None]
        failures += writer.embed(plans, cache)  # outside the lock: the slow part
        failed = {o.doc_id for o in failures}
        ready = [p for p in prepared if p.document.doc_id not in failed]
        return [*self._with_retries(partial(writer.apply, ready, cache)), *failures]

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
        return self._load(
            path_doc_id(self.settings, path), None, path, None, None, access, None, EMPTY_METADATA
        )

    def _load(
        self,
        doc_id: str,
        data: bytes | None,
        path: Path | None,
        fmt: str | None,
        title: str | None,
        access: Access,
        source: str | None,
        metadata: DocumentMetadata,
    ) -> SourceDocument:
        from index.parse import format_for, load_source, parse_document

        check_doc_id(doc_id)
        check_access(access)
        check_metadata(metadata)
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
            metadata=metadata,
        )  # fmt: skip
        if title:
            parsed = msgspec.structs.replace(parsed, title=title)
        text = "\n\n".join(section.text for section in parsed.sections)
        return SourceDocument(document=document, parsed=parsed, text=text)

    def _given_chunks(self, document: Document, chunks: Sequence[Chunk], text: str | None) -> SourceDocument:
        check_doc_id(document.doc_id)
        check_access(document.access)
        check_metadata(document.metadata)
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


def path_doc_id(settings: Settings, path: Path, *, roots: Sequence[Path] | None = None) -> str:
    """`<root name>/<path under it>` for a file under an allowed root, else its resolved path. `roots`:
    the allowed roots already resolved (`resolved_roots`), for callers naming many files."""
    resolved = Path(path).resolve()
    for root in resolved_roots(settings) if roots is None else roots:
        if resolved.is_relative_to(root):
            return f"{root.name}/{resolved.relative_to(root).as_posix()}"
    return resolved.as_posix()


def resolved_roots(settings: Settings) -> list[Path]:
    from index.parse import allowed_roots

    return [root.resolve() for root in allowed_roots(settings)]


def _display_id(name: object) -> str:
    return name.as_posix() if isinstance(name, Path) else str(name)


def _raised(code: str) -> type[DocentError]:
    kind = error_class(code)
    return IngestError if kind is DocentError else kind


def _single(report: IngestReport) -> DocumentOutcome:
    """The primary outcome of a one-document call; a failure is raised as its typed error."""
    outcome = report.documents[0]
    for o in report.documents:
        if o.status == "failed":
            raise _raised(o.error_code)(o.error, doc_id=o.doc_id, version=o.version)
    return outcome
