"""The folder connector: `docent sync DIR --tenant T [--readers ...] [--force]`.

    report = sync_folder(settings, Path("/srv/handbook"), tenant="acme", readers=("*",))   # SyncReport

One sync of a directory (the *source*):
  1. scan: every supported, non-hidden regular file under it (sorted; at most MAX_SYNC_FILES), its sha256,
     size and mtime, and its readers: the nearest `.docent-readers` file in its directory or an ancestor
     (up to the source's root), else the `readers` given. A rule file is one reader token a line (`*`,
     `user:NAME`, `group:NAME`; `#` comments); a malformed one stops the sync before anything changes.
  2. compare with the catalog, which is the only state: the tenant's live documents whose source path is
     under the directory. A file with no document is *added*; a different content hash is *changed*; the
     same content with other readers or metadata (path, mtime) is *updated* (re-committed: the stored
     vectors are reused, nothing is embedded); a document whose file is gone is *deleted*.
  3. the mass-deletion guard: deleting more than `max_delete_share` of the source's documents (default
     20%; a mounted-but-empty directory is 100%) raises `SyncRefused` unless `force`, and nothing changed.
  4. apply, under the source's lock: what an earlier interrupted run left hidden is collected first; each
     deletion is ONE catalog transaction over every index version (unsearchable at once), then the index
     files of every current version drop its entries; additions and changes go through the dual writer
     (every current version) in committed slices, reporting progress (done / total, rate, ETA) to the
     caller and on the `sync:events` stream that /ws/admin relays (store.sync_progress).
  5. the report (added, changed, updated, deleted, unchanged, failed) is appended to the sync reports
     (store.sync_reports) that the admin console shows.

Crash safety: every step is idempotent against the catalog. A SIGKILL leaves whole slices committed or
not at all (the ingest switch is one catalog transaction); the next run sees the committed files as
unchanged, ingests the rest, repeats any deletion not yet made, and collects orphaned index entries. Doc
ids come from paths (index.ingest.path_doc_id), so nothing is ever ingested twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import redis

from actors.ingestion import ingest_documents
from index.entries import DocumentOutcome, check_access
from index.ingest import path_doc_id, resolved_roots
from index.reindex.dualwrite import DualWriter
from index.types import EVERYONE, MAX_READER_CHARS, READER_PATTERN, Access
from index.versions import file_lock
from store.catalog import MAX_LIST_LIMIT, Catalog
from store.catalog_types import CatalogDocument, DocumentFilter, IngestOutcome
from store.clock import now_ms
from store.exceptions import DocentError, InputError, SyncRefused
from store.metadata import DocumentMetadata, SearchFilters
from store.redis import sync_client
from store.settings import Settings
from store.sync_progress import ProgressPublisher, SyncProgress
from store.sync_reports import MAX_REPORT_ERRORS, SYNC_DIR, SyncFailure, SyncReport, append_report

READERS_FILE = ".docent-readers"
MAX_RULE_FILE_BYTES = 64 * 1024
MAX_RULE_READERS = 256
MAX_SYNC_FILES = 200_000
DEFAULT_MAX_DELETE_SHARE = 0.2
HASH_BLOCK_BYTES = 1 << 20


class LocalFile(msgspec.Struct, frozen=True, kw_only=True):
    doc_id: str
    path: str  # resolved: the document's `source` in the catalog
    relative: str  # under the source's root, POSIX separators
    sha256: str
    size: int
    mtime_ms: int
    readers: tuple[str, ...]

    def metadata(self) -> DocumentMetadata:
        return DocumentMetadata(path=self.relative, modified_ms=self.mtime_ms)


class SyncPlan(msgspec.Struct, frozen=True, kw_only=True):
    files: int
    added: tuple[LocalFile, ...]
    changed: tuple[LocalFile, ...]
    updated: tuple[LocalFile, ...]
    deleted: tuple[str, ...]  # doc ids
    unchanged: int
    existing: int  # the source's documents before the sync


ProgressFn = Callable[[SyncProgress], None]


# -- the scan -------------------------------------------------------------------------------------------


def read_rules(path: Path) -> tuple[str, ...]:
    """The reader tokens of one `.docent-readers` file; InputError naming the file when malformed."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})", field="readers", file=str(path)) from None
    if len(raw) > MAX_RULE_FILE_BYTES:
        raise InputError(f"{path}: over {MAX_RULE_FILE_BYTES} bytes", field="readers", file=str(path))
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8", field="readers", file=str(path)) from None
    tokens = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    for token in tokens:
        if len(token) > MAX_READER_CHARS or not re.match(READER_PATTERN, token):
            raise InputError(f"{path}: bad reader token {token!r}", field="readers", file=str(path))
    if not 1 <= len(tokens) <= MAX_RULE_READERS:
        raise InputError(f"{path}: 1..{MAX_RULE_READERS} reader tokens", field="readers", file=str(path))
    return tuple(dict.fromkeys(tokens))


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def scan(settings: Settings, root: Path, readers: Sequence[str]) -> list[LocalFile]:
    """Every supported file under `root` with its hash and readers (rule files inherited downwards)."""
    from index.parse import FORMAT_BY_SUFFIX

    found: list[LocalFile] = []
    roots = resolved_roots(settings)
    inherited: dict[str, tuple[str, ...]] = {}
    for directory, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(directory)
        parent = inherited.get(str(here.parent), tuple(readers))
        rules = here / READERS_FILE
        inherited[directory] = read_rules(rules) if READERS_FILE in names else parent
        for name in sorted(names):
            if name.startswith(".") or Path(name).suffix.lower() not in FORMAT_BY_SUFFIX:
                continue
            path = here / name
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode):
                continue  # symlinks, FIFOs: never followed
            if len(found) >= MAX_SYNC_FILES:
                raise InputError(f"{root}: more than {MAX_SYNC_FILES} files; sync its subdirectories")
            doc_id = path_doc_id(settings, path, roots=roots)
            found.append(_local_file(doc_id, root, path, info, inherited[directory]))
    return found


def _local_file(
    doc_id: str, root: Path, path: Path, info: os.stat_result, readers: tuple[str, ...]
) -> LocalFile:
    return LocalFile(
        doc_id=doc_id, path=str(path), relative=path.relative_to(root).as_posix(),
        sha256=file_digest(path), size=info.st_size, mtime_ms=info.st_mtime_ns // 1_000_000, readers=readers,
    )  # fmt: skip


# -- the plan --------------------------------------------------------------------------------------------


def source_documents(catalog: Catalog, tenant: str, root: Path) -> dict[str, CatalogDocument]:
    """The tenant's live documents read from files under `root`, by doc id."""
    where = DocumentFilter(tenant=tenant, metadata=SearchFilters(source_prefix=f"{root}{os.sep}"))
    found: dict[str, CatalogDocument] = {}
    offset = 0
    while True:
        page = catalog.find_documents(where, limit=MAX_LIST_LIMIT, offset=offset)
        found.update((d.doc_id, d) for d in page)
        if len(page) < MAX_LIST_LIMIT:
            return found
        offset += MAX_LIST_LIMIT


def plan_sync(files: Sequence[LocalFile], existing: dict[str, CatalogDocument]) -> SyncPlan:
    added, changed, updated = [], [], []
    for f in files:
        doc = existing.get(f.doc_id)
        if doc is None:
            added.append(f)
        elif doc.content_hash != f.sha256:
            changed.append(f)
        elif set(doc.readers) != set(f.readers) or doc.metadata != f.metadata() or doc.source != f.path:
            updated.append(f)
    present = {f.doc_id for f in files}
    return SyncPlan(
        files=len(files), added=tuple(added), changed=tuple(changed), updated=tuple(updated),
        deleted=tuple(sorted(set(existing) - present)),
        unchanged=len(files) - len(added) - len(changed) - len(updated), existing=len(existing),
    )  # fmt: skip


def check_deletions(plan: SyncPlan, max_share: float, force: bool) -> None:
    if force or not plan.deleted:
        return
    if len(plan.deleted) > max_share * plan.existing:
        raise SyncRefused(
            f"this sync would delete {len(plan.deleted)} of the source's {plan.existing} documents "
            f"(over {max_share:.0%}); check the directory is mounted, then sync again with --force",
            deleted=len(plan.deleted), existing=plan.existing,
        )  # fmt: skip


# -- applying it -----------------------------------------------------------------------------------------


class _Meter:
    def __init__(self, total: int, progress: ProgressFn | None) -> None:
        self.total, self.done, self.progress = total, 0, progress
        self.started = time.monotonic()

    def add(self, n: int) -> None:
        self.done += n
        if self.progress is None:
            return
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else None
        self.progress(SyncProgress(done=self.done, total=self.total, rate_per_s=round(rate, 1),
                                   eta_s=None if eta is None else round(eta, 1)))  # fmt: skip


def _collect(settings: Settings, deleted: Sequence[str] = (), meter: _Meter | None = None) -> None:
    """Each of `deleted` unsearchable at once in every version (one catalog transaction each), then every
    hidden entry (theirs, and any an interrupted run left) collected from the index files of every
    current version, one write per version."""
    client = sync_client(settings.redis_url) if settings.redis_url else None
    try:
        with DualWriter(settings, client) as writer:
            for doc_id in deleted:
                writer.catalog.delete_everywhere(doc_id)
                writer.catalog.record_outcomes([IngestOutcome(doc_id=doc_id, version="", status="deleted")])
                if meter is not None:
                    meter.add(1)
            writer.recover(deleted)
    finally:
        if client is not None:
            client.close()


def _requests(files: Sequence[LocalFile], tenant: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f.doc_id, {"path": Path(f.path), "source": f.path, "metadata": f.metadata(),
                    "access": Access(tenant=tenant, readers=f.readers)})
        for f in files
    ]  # fmt: skip


def sync_folder(
    settings: Settings,
    root: Path,
    *,
    tenant: str,
    readers: Sequence[str] = (EVERYONE,),
    force: bool = False,
    max_delete_share: float = DEFAULT_MAX_DELETE_SHARE,
    progress: ProgressFn | None = None,
) -> SyncReport:
    """Sync one directory into the tenant's knowledge base (see the module docstring); the report."""
    started = now_ms()
    root = Path(root).resolve()
    if not root.is_dir():
        raise InputError(f"{root} is not a directory", field="dir")
    check_access(Access(tenant=tenant, readers=tuple(readers)))
    lock = settings.data_path / SYNC_DIR / f"{hashlib.sha256(str(root).encode()).hexdigest()[:16]}.lock"
    with file_lock(lock), _redis(settings) as client:
        live = ProgressPublisher(client, source=str(root), tenant=tenant, then=progress)  # for /ws/admin
        try:
            report = _sync_locked(settings, root, tenant, readers, force, max_delete_share, live, started)
        except SyncRefused as exc:
            report = SyncReport(source=str(root), tenant=tenant, status="refused", started_at_ms=started,
                                finished_at_ms=now_ms(), message=exc.message)  # fmt: skip
            append_report(settings.data_path, report)
            live.finish("refused")
            raise
        except DocentError as exc:
            report = SyncReport(source=str(root), tenant=tenant, status="failed", started_at_ms=started,
                                finished_at_ms=now_ms(), message=f"{exc.code}: {exc.message}")  # fmt: skip
            append_report(settings.data_path, report)
            live.finish("failed")
            raise
        append_report(settings.data_path, report)
        live.finish("completed")
    return report


@contextlib.contextmanager
def _redis(settings: Settings) -> Iterator[redis.Redis | None]:
    """The Redis a sync's progress is published to (none without a configured URL)."""
    client = sync_client(settings.redis_url) if settings.redis_url else None
    try:
        yield client
    finally:
        if client is not None:
            client.close()


def _sync_locked(
    settings: Settings,
    root: Path,
    tenant: str,
    readers: Sequence[str],
    force: bool,
    max_delete_share: float,
    progress: ProgressFn | None,
    started: int,
) -> SyncReport:
    files = scan(settings, root, readers)
    catalog = Catalog.for_data_dir(settings.data_path)
    try:
        plan = plan_sync(files, source_documents(catalog, tenant, root))
    finally:
        catalog.close()
    check_deletions(plan, max_delete_share, force)
    todo = [*plan.added, *plan.changed, *plan.updated]
    meter = _Meter(len(plan.deleted) + len(todo), progress)
    meter.add(0)  # the total is known: say so before the first slice
    _collect(settings, plan.deleted, meter)
    outcomes: list[DocumentOutcome] = []
    if todo:
        outcomes = ingest_documents(
            settings, _requests(todo, tenant), progress=lambda done: meter.add(len(done))
        )
    return _report(root, tenant, plan, outcomes, started)


def _report(
    root: Path, tenant: str, plan: SyncPlan, outcomes: Sequence[DocumentOutcome], started: int
) -> SyncReport:
    failed = [o for o in outcomes if o.status == "failed"]
    failed_ids = {o.doc_id for o in failed}

    def ok(group: Sequence[LocalFile]) -> int:
        return sum(f.doc_id not in failed_ids for f in group)

    return SyncReport(
        source=str(root), tenant=tenant, status="completed", started_at_ms=started, finished_at_ms=now_ms(),
        files=plan.files, added=ok(plan.added), changed=ok(plan.changed), updated=ok(plan.updated),
        deleted=len(plan.deleted), unchanged=plan.unchanged, failed=len(failed),
        embedded=sum(o.embedded for o in outcomes),
        failures=tuple(SyncFailure(doc_id=o.doc_id, code=o.error_code, error=o.error)
                       for o in failed[:MAX_REPORT_ERRORS]),
    )  # fmt: skip
