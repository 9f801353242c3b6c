"""Dual-write: the ingest path while index versions coexist.

Under the dual-write lock, `DualWriter` applies each add/change/delete to the active version, then to the
version being built and to the retained previous version (the rollback target), each with its own model
and chunker settings, retrying a failing side. Whatever still disagrees is found by `verify` and rebuilt
by the job before any cutover.

Worker side (the ingest worker): loads numpy, the embedders and the indexes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any, Literal

import msgspec
import redis

from index.context import LLM_CONTEXT_VERSION
from index.embed import load_embedder
from index.ingest import Contextualizer, DocumentOutcome, Ingestor
from index.reindex.alias import PairAlias, is_dropped, read_alias
from index.reindex.embedders import named_embedder
from index.reindex.jobs import current_job
from index.reindex.ledger import Ledger
from index.reindex.locks import dual_write_lock
from index.types import Chunk, Document
from index.versions import read_manifest, version_path
from store.catalog import Catalog
from store.exceptions import DocentError, IndexNotFound
from store.retry import RetryPolicy
from store.settings import Settings

log = logging.getLogger(__name__)

DUAL_WRITE_RETRY = RetryPolicy(max_retries=4, first_s=0.05, max_s=0.4)  # the other side only

Step = Callable[[Ingestor], DocumentOutcome]
Request = tuple[str, dict[str, Any]]


class Target(msgspec.Struct, frozen=True, kw_only=True):
    version: str
    embedder: str  # registered name; "" = find it by the manifest's identity
    chunk_tokens: int
    chunk_overlap: int
    role: Literal["active", "building", "previous"]


def _state(settings: Settings, version: str) -> str | None:
    with suppress(IndexNotFound):
        return read_manifest(settings, version).state
    return None


def _active_target(settings: Settings, alias: PairAlias | None) -> Target | None:
    if alias is None:
        return None
    return Target(version=alias.version, embedder=alias.embedder, role="active",
                  chunk_tokens=settings.chunk_tokens, chunk_overlap=settings.chunk_overlap)  # fmt: skip


def _building_target(settings: Settings, client: redis.Redis | None) -> Target | None:
    job = current_job(client) if client is not None else None
    if job is None or not (version_path(settings, job.new_version) / "manifest.json").exists():
        return None
    if _state(settings, job.new_version) not in ("building", "validating"):
        return None
    return Target(version=job.new_version, embedder=job.model, role="building",
                  chunk_tokens=job.chunk_tokens, chunk_overlap=job.chunk_overlap)  # fmt: skip


def _previous_target(settings: Settings, alias: PairAlias | None) -> Target | None:
    if alias is None or not alias.previous or is_dropped(settings, alias.previous):
        return None
    if _state(settings, alias.previous) != "retired":
        return None
    return Target(version=alias.previous, embedder=alias.previous_embedder, role="previous",
                  chunk_tokens=settings.chunk_tokens, chunk_overlap=settings.chunk_overlap)  # fmt: skip


def write_targets(settings: Settings, client: redis.Redis | None) -> list[Target]:
    """Where an ingest goes now: the active version first, then a version being built, then the retained
    previous version (kept exact so a rollback loses nothing)."""
    alias = read_alias(settings)
    targets = [
        _active_target(settings, alias),
        _building_target(settings, client),
        _previous_target(settings, alias),
    ]
    unique: dict[str, Target] = {}
    for target in targets:
        if target is not None:
            unique.setdefault(target.version, target)
    return list(unique.values())


class DualWriter:
    """Ingest and delete through every current target; the active one first (its errors are the caller's),
    each other side retried per `DUAL_WRITE_RETRY`. All under the dual-write lock."""

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis | None = None,
        *,
        catalog: Catalog | None = None,
        contextualizer: Contextualizer | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.contextualizer = contextualizer  # used for versions whose manifest says LLM contexts
        self._owns_catalog = catalog is None
        self.catalog = catalog or Catalog.for_data_dir(settings.data_path)
        self.failures = 0  # other-side writes that still failed after the retries (the job re-syncs them)

    def close(self) -> None:
        if self._owns_catalog:
            self.catalog.close()

    def __enter__(self) -> DualWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ingestor(self, target: Target) -> Ingestor:
        manifest = read_manifest(self.settings, target.version)
        embedder = named_embedder(self.settings, manifest, target.embedder)
        settings = msgspec.structs.replace(
            self.settings, chunk_tokens=target.chunk_tokens, chunk_overlap=target.chunk_overlap
        )
        with_llm = self.contextualizer if manifest.context_version == LLM_CONTEXT_VERSION else None
        return Ingestor(settings, embedder, target.version, catalog=self.catalog, contextualizer=with_llm)

    def _first_ingestor(self) -> Ingestor:
        """The ingestor that creates the first (active) version with the configured embedder."""
        embedder = load_embedder(self.settings, purpose="offline")
        return Ingestor(self.settings, embedder, catalog=self.catalog, contextualizer=self.contextualizer)

    def _apply(self, step: Step, doc_id: str) -> list[DocumentOutcome]:
        outcomes: list[DocumentOutcome] = []
        with dual_write_lock(self.settings):
            targets = write_targets(self.settings, self.client)
            if not targets:  # no index yet: the first ingest creates the active version
                with self._first_ingestor() as ingestor:
                    return [step(ingestor)]
            for n, target in enumerate(targets):
                outcome = self._write(target, step, doc_id, primary=n == 0)
                if outcome is not None:
                    outcomes.append(outcome)
        return outcomes

    def _write(self, target: Target, step: Step, doc_id: str, *, primary: bool) -> DocumentOutcome | None:
        """One target; the primary (first, active) one's error is the caller's, another side is retried."""
        attempts = 1 if primary else DUAL_WRITE_RETRY.max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                with self._ingestor(target) as ingestor:
                    outcome = step(ingestor)
                self._record(target.version, doc_id)
                return outcome
            except DocentError as exc:
                if primary:
                    raise  # the caller's error: nothing was written elsewhere
                if attempt == attempts:
                    self.failures += 1
                    log.warning("dual-write to %s failed for %s: %s", target.version, doc_id, exc)
                else:
                    time.sleep(DUAL_WRITE_RETRY.delay_s(attempt - 1))
        return None

    def _record(self, version: str, doc_id: str) -> None:
        self._record_many(version, [doc_id])

    def _record_many(self, version: str, doc_ids: Sequence[str]) -> None:
        """The version's build ledger brought in line with the catalog for these documents (one commit)."""
        marks, forgets = [], []
        for doc_id in doc_ids:
            document = self.catalog.get_document(doc_id)
            if document is None or document.deleted:
                forgets.append(doc_id)
            else:
                chunks = len(self.catalog.visible_chunks(version, doc_id))
                marks.append((doc_id, document.content_hash, chunks))
        Ledger(self.settings, version).record(marks, forgets)

    def ingest_document(self, doc_id: str, **kwargs: Any) -> list[DocumentOutcome]:
        """`Ingestor.ingest_document` on every target; the first outcome is the active version's."""
        return self._apply(lambda ingestor: ingestor.ingest_document(doc_id, **kwargs), doc_id)

    def ingest_documents(self, requests: Sequence[Request]) -> list[DocumentOutcome]:
        """Many documents in batched commits on every target; returns the active version's outcomes.

        Per-document failures are outcomes (the batch goes on); another side's failures are counted in
        `failures` and left to the rebuild's pre-cutover re-sync, like `_apply`'s exhausted retries.
        """
        if not requests:
            return []
        with dual_write_lock(self.settings):
            targets = write_targets(self.settings, self.client)
            if not targets:  # no index yet: the first ingest creates the active version
                with self._first_ingestor() as ingestor:
                    return ingestor.ingest_documents(requests).documents
            primary = self._batch(targets[0], requests, primary=True)
            for target in targets[1:]:
                self._batch(target, requests, primary=False)
        return primary

    def _batch(self, target: Target, requests: Sequence[Request], *, primary: bool) -> list[DocumentOutcome]:
        """The batch on one target: its outcomes; another side's failures are counted, not raised."""
        try:
            with self._ingestor(target) as ingestor:
                report = ingestor.ingest_documents(requests)
        except DocentError as exc:
            if primary:
                raise
            self.failures += len(requests)
            log.warning("dual-write batch to %s failed: %s", target.version, exc)
            return []
        mine = [o for o in report.documents if o.version == target.version]
        self._record_many(target.version, [o.doc_id for o in mine if o.status != "failed"])
        if not primary:
            self.failures += sum(o.status == "failed" for o in mine)
        return mine

    def ingest_chunks(
        self, document: Document, chunks: Sequence[Chunk], *, text: str | None = None
    ) -> list[DocumentOutcome]:
        return self._apply(
            lambda ingestor: ingestor.ingest_chunks(document, chunks, text=text), document.doc_id
        )

    def delete_document(self, doc_id: str, *, tenant: str | None = None) -> list[DocumentOutcome]:
        return self._apply(lambda ingestor: ingestor.delete_document(doc_id, tenant=tenant), doc_id)

    def recover(self, deleted: Sequence[str] = ()) -> int:
        """`Ingestor.recover` on every current target: every hidden entry (of documents `deleted` in the
        catalog, or left by interrupted writes) is collected, one write per target; the build ledgers
        forget `deleted`. Returns the entries collected."""
        with dual_write_lock(self.settings):
            collected = 0
            for target in write_targets(self.settings, self.client):
                with self._ingestor(target) as ingestor:
                    collected += ingestor.recover()
                self._record_many(target.version, deleted)
            return collected

    def resync(self, doc_id: str) -> int:
        """`Ingestor.resync` on every current target (after a catalog-only delete or readers change)."""
        with dual_write_lock(self.settings):
            rewritten = [self._resync(target, doc_id) for target in write_targets(self.settings, self.client)]
        return rewritten[0] if rewritten else 0

    def _resync(self, target: Target, doc_id: str) -> int:
        with self._ingestor(target) as ingestor:
            rewritten = ingestor.resync(doc_id)
        self._record(target.version, doc_id)
        return rewritten
