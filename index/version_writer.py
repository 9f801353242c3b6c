"""Writing one index version: plan a batch against the catalog, embed what is new, switch it in atomically.

The switch (under the version's write lock) is the one index.ingest describes: new rows hidden in the catalog,
both indexes gain the new entries, one catalog transaction makes them visible, the replaced ones collected.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np
import numpy.typing as npt

from index.entries import (
    DocumentOutcome,
    IngestTarget,
    OutcomeStatus,
    catalog_document,
    chunk_of,
    entry_key,
    lexical_entry,
    row_of,
    text_digest,
)
from index.lexical import LexicalIndex
from index.types import Chunk, Document, Manifest
from index.vectors import VectorIndex
from index.versions import (
    check_model,
    read_manifest,
    set_counts,
    version_path,
    write_lock,
)
from store.catalog import Catalog
from store.catalog_types import DocumentCommit
from store.exceptions import (
    DocentError,
    IndexError_,
)  # fmt: skip
from store.settings import Settings

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

    def optimize(self) -> int:
        """The lexical index as one segment (LexicalIndex.optimize), under the version's write lock."""
        with write_lock(self.settings, self.version):
            return self.lexical.optimize()

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

    def resync(self, doc_id: str) -> int:
        """The index files brought in line with the catalog for one document after an in-place catalog
        change (a delete, new readers): hidden entries collected, visible ones rewritten in Whoosh under
        the same keys with the catalog's readers (vectors untouched: nothing is embedded).

        Returns how many entries were rewritten."""
        with write_lock(self.settings, self.version):
            try:
                self.vectors.refresh(now=True)
                self.collect()
                rows = self.catalog.visible_chunks(self.version, doc_id)
                self.lexical.apply(add=[lexical_entry(row.key, chunk_of(row)) for row in rows])
            except BaseException:
                self.vectors.discard_changes()
                raise
            self._update_counts()
        return len(rows)

    def _commit(self, plan: _Plan) -> DocumentCommit:
        prepared = plan.prepared
        return DocumentCommit(
            document=catalog_document(prepared.document),
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
