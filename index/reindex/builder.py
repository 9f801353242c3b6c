"""The builder: one slice of a job's work on the new version, in a worker that holds the job's lease.

Every live catalog document is embedded into the new version with the bulk (offline) embedder, one
document per commit. The checkpoint is the version's ledger: a resumed build does the documents whose
ledger hash differs from the catalog's, and a document committed but not yet in the ledger is recognised
by its ingest hash and never embedded twice. Chunks are the old version's (same chunker, only the vectors
change) unless the job gives chunker settings: then documents are re-chunked from their source file (when
its hash still matches) or their stored text. Then the gate, then the cutover under the commit guard.

Worker side: loads numpy, the embedder and the indexes.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

import msgspec
import redis

from index.chunk import CHUNKER_VERSION, chunk_document
from index.context import CONTEXT_VERSION, deterministic_context
from index.embed import load_embedder
from index.entries import chunk_of, ingest_hash
from index.ingest import SPECIAL_TOKENS_RESERVE, Ingestor
from index.parse import parse_document
from index.reindex.alias import read_alias, switch_pair
from index.reindex.embedders import PrecomputedEmbedder, embedder_for
from index.reindex.gate import run_gate
from index.reindex.jobs import GateReport, ReindexJob, save_job
from index.reindex.ledger import Ledger
from index.reindex.locks import commit_guard
from index.reindex.verify import Verification, live_documents, seed_ledger, verify
from index.types import Access, Chunk, Document, ParsedDocument, Section
from index.versions import create_version, get_active, read_manifest, version_path
from store.catalog import Catalog
from store.catalog_types import CatalogDocument
from store.exceptions import DocentError, IngestError, InputError
from store.settings import Settings

PUBLISH_EVERY_S = 0.5
MAX_ERROR_SAMPLES = 20
SAME_CONTENT_FIELDS = ("doc_id", "title", "format", "content_hash", "tenant", "readers", "deleted")

Source = tuple[Document, list[Chunk], str]  # what one document is rebuilt from: document, chunks, text


def as_document(doc: CatalogDocument) -> Document:
    return Document(
        doc_id=doc.doc_id, title=doc.title, source=doc.source, format=doc.format,
        content_hash=doc.content_hash, access=Access(tenant=doc.tenant, readers=tuple(doc.readers)),
        size_bytes=doc.size_bytes,
    )  # fmt: skip


def same_content(a: CatalogDocument, b: CatalogDocument) -> bool:
    return all(getattr(a, f) == getattr(b, f) for f in SAME_CONTENT_FIELDS)


class Builder:
    """One slice of a job, in a worker that holds the job's lease."""

    def __init__(self, settings: Settings, client: redis.Redis, job: ReindexJob, catalog: Catalog) -> None:
        self.settings = settings
        self.client = client
        self.job = job
        self.catalog = catalog
        capped = msgspec.structs.replace(settings, bulk_embed_threads=settings.reindex_embed_threads)
        self.base = load_embedder(capped, job.model, purpose="offline")
        self.embedder = PrecomputedEmbedder(self.base)
        self.build_settings = msgspec.structs.replace(
            settings, chunk_tokens=job.chunk_tokens, chunk_overlap=job.chunk_overlap
        )
        self.ledger = Ledger(settings, job.new_version)
        self._ingestor: Ingestor | None = None
        self._published = 0.0

    # -- setup -----------------------------------------------------------------------------------------

    def ensure_version(self) -> None:
        directory = version_path(self.settings, self.job.new_version)
        if (directory / "manifest.json").exists():
            return
        if directory.exists():  # a worker died inside create_version: start the empty version again
            shutil.rmtree(directory)
        create_version(
            self.settings, self.base.identity, chunker_version=CHUNKER_VERSION,
            context_version=CONTEXT_VERSION, version=self.job.new_version,
        )  # fmt: skip

    @property
    def ingestor(self) -> Ingestor:
        if self._ingestor is None:
            self._ingestor = Ingestor(
                self.build_settings, self.embedder, self.job.new_version, catalog=self.catalog
            )
        return self._ingestor

    def close(self) -> None:
        if self._ingestor is not None:
            self._ingestor.close()

    # -- progress ------------------------------------------------------------------------------------------

    def publish(self, *, force: bool = False) -> None:
        job = self.job
        if job.build_s > 0:
            job.chunks_per_s = round(job.chunks_embedded / job.build_s, 2)
        remaining = max(0, job.docs_total - job.docs_done)
        job.eta_s = round(remaining * job.build_s / job.docs_embedded, 1) if job.docs_embedded else None
        if force or time.monotonic() - self._published >= PUBLISH_EVERY_S:
            save_job(self.client, job)
            self._published = time.monotonic()

    def error(self, doc_id: str, exc: DocentError) -> None:
        self.job.errors += 1
        if len(self.job.error_samples) < MAX_ERROR_SAMPLES:
            self.job.error_samples.append(f"{doc_id}: {exc.code}: {exc.message}")

    def _fail(self, doc: CatalogDocument, exc: DocentError) -> None:
        self.job.failed_docs[doc.doc_id] = doc.content_hash
        self.error(doc.doc_id, exc)

    # -- building ------------------------------------------------------------------------------------------

    def todo(self) -> tuple[list[CatalogDocument], list[str]]:
        """(live documents the version lacks or holds stale, doc ids it holds that are no longer live)."""
        live = live_documents(self.catalog)
        built = self.ledger.all()
        held = set(self.catalog.version_doc_ids(self.job.new_version))
        self.job.docs_total = len(live)
        self.job.docs_done = sum(
            1 for d in live.values() if built.get(d.doc_id) == d.content_hash and d.doc_id in held
        )
        todo = [
            d
            for d in live.values()
            if (built.get(d.doc_id) != d.content_hash or d.doc_id not in held)
            and self.job.failed_docs.get(d.doc_id) != d.content_hash
        ]
        return todo, sorted(held - live.keys())

    def source(self, doc: CatalogDocument) -> Source:
        text = self.catalog.document_text(doc.doc_id)
        old = self.job.old_version
        if not self.job.rechunk and old is not None:
            rows = self.catalog.visible_chunks(old, doc.doc_id)
            if rows:
                chunks = [chunk_of(row) for row in rows]
                return (
                    as_document(doc),
                    chunks,
                    text if text is not None else "\n\n".join(c.text for c in chunks),
                )
        if text is None:
            raise IngestError(f"{doc.doc_id}: neither chunks nor text to rebuild from", doc_id=doc.doc_id)
        return as_document(doc), self.rechunk(doc, text), text

    def _parsed(self, doc: CatalogDocument, text: str) -> ParsedDocument:
        """The source file parsed again when it still has the catalog's hash, else the stored text."""
        parsed: ParsedDocument | None = None
        path = Path(doc.source)
        with suppress(OSError, DocentError):
            if path.is_file():
                data = path.read_bytes()
                if hashlib.sha256(data).hexdigest() == doc.content_hash:
                    parsed = parse_document(data, doc.format, name=doc.source)
        if parsed is None:
            parsed = ParsedDocument(
                title=doc.title, format="txt", sections=(Section(headings=(), text=text),)
            )
        return msgspec.structs.replace(parsed, title=doc.title)

    def rechunk(self, doc: CatalogDocument, text: str) -> list[Chunk]:
        return chunk_document(
            self._parsed(doc, text), doc_id=doc.doc_id,
            access=Access(tenant=doc.tenant, readers=tuple(doc.readers)),
            max_tokens=self.job.chunk_tokens, overlap=self.job.chunk_overlap,
            count_tokens=self.base.count_tokens, context_for=deterministic_context,
            reserve_tokens=SPECIAL_TOKENS_RESERVE,
        )  # fmt: skip

    def build_one(self, doc: CatalogDocument) -> None:
        started = time.perf_counter()
        source = self._source_or_fail(doc)
        if source is None or self._already_committed(doc, source):
            return
        if not self._embed_ahead(doc, source[1]) or not self._commit(doc, source):
            return
        self.job.docs_done += 1
        self.job.docs_embedded += 1
        self.job.chunks_embedded += len(source[1])
        self.job.build_s += time.perf_counter() - started

    def _source_or_fail(self, doc: CatalogDocument) -> Source | None:
        try:
            return self.source(doc)
        except DocentError as exc:
            now = self.catalog.get_document(doc.doc_id)
            if now is not None and same_content(now, doc):  # else: changed meanwhile, the next pass has it
                self._fail(doc, exc)
            return None

    def _already_committed(self, doc: CatalogDocument, source: Source) -> bool:
        """Committed by a worker that died before its ledger write: nothing to embed again."""
        document, chunks, _text = source
        if self.catalog.ingest_hash(self.job.new_version, doc.doc_id) != ingest_hash(document, chunks):
            return False
        self.ledger.mark(doc.doc_id, doc.content_hash, len(chunks), embedded=False)
        self.job.docs_done += 1
        return True

    def _embed_ahead(self, doc: CatalogDocument, chunks: Sequence[Chunk]) -> bool:
        """Embed outside the guard (the slow part); the commit then finds the vectors precomputed."""
        texts = [chunk.indexed_text() for chunk in chunks]
        try:
            self.embedder.put(texts, self.base.embed(texts))
        except DocentError as exc:
            self._fail(doc, exc)
            return False
        return True

    def _commit(self, doc: CatalogDocument, source: Source) -> bool:
        document, chunks, text = source
        with commit_guard(self.settings, self._active_other()):  # the Ingestor locks the new version
            current = self.catalog.get_document(doc.doc_id)
            if current is None or not same_content(current, doc):
                self.embedder.vectors.clear()
                return False  # changed meanwhile (a dual-write has it, or the next pass does)
            try:
                self.ingestor.ingest_chunks(document, chunks, text=text)
            except (IngestError, InputError) as exc:
                self._fail(doc, exc)
                return False
            finally:
                self.embedder.vectors.clear()
            self.ledger.mark(doc.doc_id, doc.content_hash, len(chunks), embedded=True)
        return True

    def _active_other(self) -> str | None:
        active = get_active(self.settings)
        return active if active != self.job.new_version else None

    def drop_extra(self, doc_ids: Sequence[str]) -> None:
        for doc_id in doc_ids:
            with commit_guard(self.settings, self._active_other()):  # the Ingestor locks the new version
                current = self.catalog.get_document(doc_id)
                if current is not None and not current.deleted:
                    continue
                self.ingestor.delete_document(doc_id)
                self.ledger.forget(doc_id)

    # -- validating and cutover ---------------------------------------------------------------------------

    def gate(self) -> GateReport:
        old = self.job.old_version
        if old is None:
            return GateReport(passed=True, tolerance=self.settings.gate_tolerance, reason="first version")
        old_manifest = read_manifest(self.settings, old)
        alias = read_alias(self.settings)
        hint = alias.embedder if alias is not None and alias.version == old else ""
        old_pair = (old, embedder_for(self.settings, old_manifest, hint, purpose="offline")[1])
        return run_gate(self.settings, self.catalog, old_pair, (self.job.new_version, self.base))

    def cutover(self) -> Verification:
        """Under the guard: verify exactness, then the one alias switch. Not exact: nothing switched."""
        job = self.job
        with commit_guard(self.settings, job.old_version, job.new_version):
            check = verify(self.settings, self.catalog, job.new_version)
            if not check.exact:
                return check
            previous_embedder = self._previous_embedder()
            if job.old_version is not None:
                seed_ledger(self.settings, self.catalog, job.old_version)
            switch_pair(
                self.settings, job.new_version, self.base.identity, embedder=job.model,
                previous=job.old_version, previous_embedder=previous_embedder, reason=f"reindex {job.id}",
            )  # fmt: skip
        return check

    def _previous_embedder(self) -> str:
        """The registered name of the outgoing version's embedder (what a rollback queries with)."""
        old = self.job.old_version
        alias = read_alias(self.settings)
        known = alias.embedder if alias is not None and alias.version == old else ""
        if old is None or known:
            return known
        return embedder_for(self.settings, read_manifest(self.settings, old), purpose="offline")[0]
