"""Zero-downtime reindex: build the next index version with another embedding model, gate it, switch.

    job = start_job(settings, client, model="minilm-rot")        # web process: Redis only, no model
    run_slice(settings, client, job.id)                           # worker (actors.reindex): resumable
    rollback(settings, client, actor="admin")                     # the same one alias switch, back

The job (Redis `reindex:job:<id>`, one at a time: `reindex:current`) walks these states:

    queued -> building -> validating -> done | rejected | cancelled | failed

building    every live catalog document is embedded into the new version with the bulk (offline) embedder,
            one document per commit. The checkpoint is the version's ledger (`<version>/reindex.sqlite`:
            doc id -> content hash it was built from): a killed worker resumes with the documents whose
            ledger hash differs from the catalog's, and a document committed but not yet in the ledger is
            recognised by its ingest hash and never embedded twice. Chunks are the active version's (same
            chunker, only the vectors change) unless the job gives chunker settings: then documents are
            re-chunked from their source file (when its hash still matches) or their stored text.
validating  the gate (`run_gate`): the golden sets (BEIR layout) run against the old and the new version,
            dense and hybrid; any nDCG@10 or recall@20 drop beyond `settings.gate_tolerance` rejects the
            job (the old version stays active) unless the job was forced (recorded in the audit log).
cutover     under the commit guard (the dual-write lock and the active version's write lock), the new
            version must hold exactly the catalog's live documents (ids, counts, content hashes: `verify`)
            or the job goes back to building the difference; then ONE alias write names the new pair
            (version + query embedding model) and remembers the previous pair for rollback.

Dual-write: `DualWriter` is the ingest path while versions coexist. Under the dual-write lock it applies
each add/change/delete to the active version, then to the version being built and to the retained
previous version (rollback target), each with its own model and chunker settings, retrying a failing side;
whatever still disagrees is found by `verify` and rebuilt by the job before any cutover.

Progress (documents done/total, chunks/s, ETA, errors) is the job record itself, published on the Redis
stream `reindex:events` (what /ws/admin relays). Admin actions go to `reindex:audit` and
`<index_root>/audit.jsonl`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import redis

from index.types import Access, Chunk, Document, Manifest, ModelIdentity, Principal
from index.versions import (
    ACTIVATABLE,
    _update_manifest,
    alias_path,
    atomic_write,
    check_model,
    file_lock,
    get_active,
    list_versions,
    new_version_name,
    read_manifest,
    set_state,
    version_path,
    write_lock,
)
from store.catalog import Catalog, CatalogDocument
from store.exceptions import (
    DocentError,
    IndexError_,
    IndexNotFound,
    IngestError,
    InputError,
    ReindexRefused,
)
from store.settings import Settings

if TYPE_CHECKING:  # the web process imports this module for the admin API and must not load numpy
    import numpy as np
    import numpy.typing as npt

    from index.ingest import Contextualizer, DocumentOutcome, Ingestor
    from index.types import Embedder

log = logging.getLogger(__name__)

RUN_ACTOR_NAME = "reindex_run"  # the dramatiq actor (actors.reindex) the web process enqueues by name
JOB_KEY = "reindex:job:{}"
CANCEL_KEY = "reindex:cancel:{}"
LEASE_KEY = "reindex:lease:{}"
CURRENT_KEY = "reindex:current"
JOBS_KEY = "reindex:jobs"  # sorted set: job id by creation time
EVENTS_STREAM = "reindex:events"
AUDIT_STREAM = "reindex:audit"
EVENTS_MAXLEN = 2000
AUDIT_FILE = "audit.jsonl"
LEDGER_FILE = "reindex.sqlite"
DROPPED_FILE = "dropped"
DUAL_WRITE_LOCK_FILE = "dualwrite.lock"
DUAL_WRITE_ATTEMPTS = 5
DUAL_WRITE_BACKOFF_S = 0.05
PUBLISH_EVERY_S = 0.5
CUTOVER_ROUNDS = 5  # verify -> rebuild the difference -> verify, at most this often per slice
MAX_ERROR_SAMPLES = 20
GOLDEN_DEMO_DIR = Path(__file__).resolve().parent.parent / "tests" / "golden" / "demo"
GATE_MODES = ("dense", "hybrid")
GATE_METRICS = ("ndcg@10", "recall@20")
LEDGER_BUSY_TIMEOUT_S = 30.0
BULK_NICE = 10  # the building thread (and the embedder threads it starts) yields the CPU to queries

JobStatus = Literal["queued", "building", "validating", "done", "rejected", "cancelled", "failed"]
TERMINAL: tuple[JobStatus, ...] = ("done", "rejected", "cancelled", "failed")
RUNNING: tuple[JobStatus, ...] = ("queued", "building", "validating")


# -- records --------------------------------------------------------------------------------------------


class MetricDelta(msgspec.Struct, frozen=True, kw_only=True):
    golden_set: str
    mode: str
    metric: str
    old: float
    new: float
    regressed: bool


class GateReport(msgspec.Struct, kw_only=True):
    passed: bool
    tolerance: float
    sets: list[str] = []
    skipped: list[str] = []
    deltas: list[MetricDelta] = []
    queries: int = 0
    reason: str = ""
    forced: bool = False


class ReindexJob(msgspec.Struct, kw_only=True):
    id: str
    model: str  # the registered embedder name (index.embed) of the new version
    new_version: str
    old_version: str | None
    chunk_tokens: int
    chunk_overlap: int
    rechunk: bool  # chunker settings given: re-chunk every document instead of reusing the old chunks
    force: bool = False
    requested_by: str = ""
    status: JobStatus = "queued"
    message: str = ""
    docs_total: int = 0
    docs_done: int = 0
    docs_embedded: int = 0  # documents this job embedded (a resumed job never embeds a finished one again)
    chunks_embedded: int = 0
    errors: int = 0
    error_samples: list[str] = []
    failed_docs: dict[str, str] = {}  # doc id -> content hash that could not be built
    build_s: float = 0.0  # time spent building, over every slice
    chunks_per_s: float = 0.0
    eta_s: float | None = None
    slices: int = 0
    gate: GateReport | None = None
    created_at_ms: int = 0
    updated_at_ms: int = 0
    finished_at_ms: int = 0

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class PairAlias(msgspec.Struct, frozen=True, kw_only=True):
    """`<index_root>/active.json`: the active pair and the pair a rollback returns to.

    A superset of `index.versions.ActiveAlias` (`get_active` reads the same file)."""

    version: str
    switched_at_ms: int
    model: ModelIdentity | None = None  # the query embedding model of `version`
    embedder: str = ""  # its registered name
    previous: str | None = None
    previous_embedder: str = ""
    reason: str = ""


_job_decoder = msgspec.json.Decoder(ReindexJob)
_alias_decoder = msgspec.json.Decoder(PairAlias)
_encoder = msgspec.json.Encoder()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- the alias: one switch names the pair ------------------------------------------------------------------


def read_alias(settings: Settings) -> PairAlias | None:
    try:
        return _alias_decoder.decode(alias_path(settings).read_bytes())
    except FileNotFoundError:
        return None
    except msgspec.DecodeError as exc:
        raise IndexError_(f"unreadable active alias: {exc}") from None


def switch_pair(
    settings: Settings,
    version: str,
    identity: ModelIdentity,
    *,
    embedder: str,
    previous: str | None,
    previous_embedder: str = "",
    reason: str = "",
) -> PairAlias:
    """The one alias write that makes (version, identity) the active pair; `previous` becomes retired.

    Raises ModelMismatch when `identity` is not the model the version was built with."""
    manifest = read_manifest(settings, version)
    check_model(manifest, identity)
    if manifest.state not in ACTIVATABLE:
        raise ReindexRefused(
            f"version {version} is {manifest.state} and cannot become active", version=version
        )
    if is_dropped(settings, version):
        raise ReindexRefused(f"version {version} was retired and its data dropped", version=version)
    _update_manifest(settings, version, state="active")
    alias = PairAlias(
        version=version, switched_at_ms=now_ms(), model=identity, embedder=embedder,
        previous=previous if previous != version else None, previous_embedder=previous_embedder,
        reason=reason,
    )  # fmt: skip
    atomic_write(alias_path(settings), _encoder.encode(alias))
    if previous is not None and previous != version:
        with suppress(IndexNotFound):
            set_state(settings, previous, "retired")
    return alias


def is_dropped(settings: Settings, version: str) -> bool:
    return (version_path(settings, version) / DROPPED_FILE).exists()


# -- the ledger: what each version was built from (the per-document checkpoint) -----------------------------


class Ledger:
    """`<version>/reindex.sqlite`: doc id -> the catalog content hash its entries were built from."""

    def __init__(self, settings: Settings, version: str) -> None:
        self.path = version_path(settings, version) / LEDGER_FILE

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=LEDGER_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS built (doc_id TEXT PRIMARY KEY, content_hash TEXT NOT NULL, "
                "chunks INTEGER NOT NULL, runs INTEGER NOT NULL, updated_at_ms INTEGER NOT NULL)"
            )
            yield db
        except sqlite3.Error as exc:
            raise IndexError_(f"reindex ledger {self.path}: {exc}") from exc
        finally:
            db.close()

    def all(self) -> dict[str, str]:
        with self._db() as db:
            return dict(db.execute("SELECT doc_id, content_hash FROM built").fetchall())

    def runs(self) -> dict[str, int]:
        """How often each document was embedded into this version by a build (a checkpoint audit)."""
        with self._db() as db:
            return dict(db.execute("SELECT doc_id, runs FROM built").fetchall())

    def mark(self, doc_id: str, content_hash: str, chunks: int, *, embedded: bool) -> None:
        with self._db() as db:
            db.execute(
                "INSERT INTO built (doc_id, content_hash, chunks, runs, updated_at_ms) "
                "VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(doc_id) DO UPDATE SET content_hash = excluded.content_hash, "
                "chunks = excluded.chunks, runs = runs + excluded.runs, "
                "updated_at_ms = excluded.updated_at_ms",
                (doc_id, content_hash, chunks, int(embedded), now_ms()),
            )

    def mark_many(self, items: Sequence[tuple[str, str, int]]) -> None:
        with self._db() as db:
            db.executemany(
                "INSERT OR REPLACE INTO built (doc_id, content_hash, chunks, runs, updated_at_ms) "
                "VALUES (?, ?, ?, 0, ?)",
                [(doc_id, content_hash, chunks, now_ms()) for doc_id, content_hash, chunks in items],
            )

    def forget(self, doc_id: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM built WHERE doc_id = ?", (doc_id,))


# -- catalog views -----------------------------------------------------------------------------------------


def live_documents(catalog: Catalog) -> dict[str, CatalogDocument]:
    """Every live (not deleted) document of every tenant."""
    found: dict[str, CatalogDocument] = {}
    offset = 0
    while True:
        page = catalog.list_documents(limit=1000, offset=offset)
        found.update((d.doc_id, d) for d in page)
        if len(page) < 1000:
            return found
        offset += len(page)


def as_document(doc: CatalogDocument) -> Document:
    return Document(
        doc_id=doc.doc_id, title=doc.title, source=doc.source, format=doc.format,
        content_hash=doc.content_hash, access=Access(tenant=doc.tenant, readers=tuple(doc.readers)),
        size_bytes=doc.size_bytes,
    )  # fmt: skip


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


# -- locks ----------------------------------------------------------------------------------------------


def dual_write_lock(settings: Settings) -> AbstractContextManager[None]:
    """Serialises dual-writes, the build's commits and the cutover (flock: between threads and processes)."""
    return file_lock(settings.index_root / DUAL_WRITE_LOCK_FILE)


@contextmanager
def commit_guard(settings: Settings, *versions: str | None) -> Iterator[None]:
    """The dual-write lock, then the write lock of each given version (plain Ingestors take only those)."""
    with ExitStack() as stack:
        stack.enter_context(dual_write_lock(settings))
        for version in dict.fromkeys(v for v in versions if v):
            if (version_path(settings, version)).is_dir():
                stack.enter_context(write_lock(settings, version))
        yield


# -- embedders ------------------------------------------------------------------------------------------


def embedder_for(
    settings: Settings, manifest: Manifest, name: str = "", *, purpose: Any
) -> tuple[str, Embedder]:
    """(name, embedder) whose identity is the manifest's model; `name` is tried first."""
    from index.embed import EMBEDDER_NAMES, load_embedder

    for candidate in dict.fromkeys([n for n in (name, settings.embed_model) if n] + list(EMBEDDER_NAMES)):
        try:
            embedder = load_embedder(settings, candidate, purpose=purpose)
        except DocentError:
            continue
        if embedder.identity == manifest.model:
            return candidate, embedder
    raise IndexError_(
        f"no registered embedder matches version {manifest.version} ({manifest.model.name})",
        version=manifest.version,
    )


class PrecomputedEmbedder:
    """An embedder that answers from vectors computed ahead (outside the commit guard), else its base."""

    def __init__(self, base: Embedder) -> None:
        self.base = base
        self.vectors: dict[str, npt.NDArray[np.float32]] = {}

    @property
    def identity(self) -> ModelIdentity:
        return self.base.identity

    def count_tokens(self, text: str) -> int:
        return self.base.count_tokens(text)

    def put(self, texts: Sequence[str], matrix: npt.NDArray[np.float32]) -> None:
        import numpy as np

        self.vectors.update(zip(texts, np.asarray(matrix, dtype=np.float32), strict=True))

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        import numpy as np

        items = list(texts)
        missing = [t for t in dict.fromkeys(items) if t not in self.vectors]
        if missing:
            self.put(missing, self.base.embed(missing))
        if not items:
            return np.zeros((0, self.identity.dimension), dtype=np.float32)
        return np.stack([self.vectors[t] for t in items])


# -- job records (no model, no index: the web process uses these) ---------------------------------------


def _decode_job(raw: object) -> ReindexJob | None:
    return _job_decoder.decode(raw) if isinstance(raw, bytes | str) else None


def get_job(client: redis.Redis, job_id: str) -> ReindexJob:
    job = _decode_job(client.get(JOB_KEY.format(job_id)))
    if job is None:
        raise IndexNotFound(f"no reindex job {job_id}", job_id=job_id)
    return job


def list_jobs(client: redis.Redis, limit: int = 20) -> list[ReindexJob]:
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in client.zrevrange(JOBS_KEY, 0, limit - 1)]
    return [job for i in ids if (job := _decode_job(client.get(JOB_KEY.format(i)))) is not None]


def current_job(client: redis.Redis) -> ReindexJob | None:
    raw = client.get(CURRENT_KEY)
    if raw is None:
        return None
    job = _decode_job(client.get(JOB_KEY.format(raw.decode() if isinstance(raw, bytes) else raw)))
    return job if job is not None and not job.terminal else None


def save_job(client: redis.Redis, job: ReindexJob, *, publish: bool = True) -> None:
    job.updated_at_ms = now_ms()
    data = _encoder.encode(job)
    pipe = client.pipeline()
    pipe.set(JOB_KEY.format(job.id), data)
    if publish:
        pipe.xadd(EVENTS_STREAM, {"job": data}, maxlen=EVENTS_MAXLEN, approximate=True)
    pipe.execute()


def audit(settings: Settings, client: redis.Redis | None, action: str, **details: object) -> None:
    """Append to the audit log: `<index_root>/audit.jsonl` (durable) and the `reindex:audit` stream."""
    entry = _encoder.encode({"at_ms": now_ms(), "action": action, **details})
    settings.index_root.mkdir(parents=True, exist_ok=True)
    with open(settings.index_root / AUDIT_FILE, "ab") as f:
        f.write(entry + b"\n")
    if client is not None:
        try:
            client.xadd(AUDIT_STREAM, {"entry": entry}, maxlen=EVENTS_MAXLEN, approximate=True)
        except redis.RedisError as exc:
            log.warning("audit stream write failed: %s", exc)


def read_audit(settings: Settings) -> list[dict[str, Any]]:
    path = settings.index_root / AUDIT_FILE
    if not path.exists():
        return []
    return [msgspec.json.decode(line) for line in path.read_bytes().splitlines() if line.strip()]


def start_job(
    settings: Settings,
    client: redis.Redis,
    *,
    model: str,
    chunk_tokens: int | None = None,
    chunk_overlap: int | None = None,
    force: bool = False,
    requested_by: str = "",
) -> ReindexJob:
    """Record a queued job (one at a time); the caller enqueues `RUN_ACTOR_NAME(job.id)`."""
    from index.embed import EMBEDDER_NAMES  # a constant: nothing is loaded

    if model not in EMBEDDER_NAMES:
        raise InputError(
            f"unknown embedding model {model!r}; known: {', '.join(EMBEDDER_NAMES)}", field="model"
        )
    tokens = settings.chunk_tokens if chunk_tokens is None else chunk_tokens
    overlap = settings.chunk_overlap if chunk_overlap is None else chunk_overlap
    if (
        not isinstance(tokens, int)
        or not isinstance(overlap, int)
        or tokens < 32
        or not 0 <= overlap < tokens
    ):
        raise InputError(
            "chunk_tokens must be >= 32 and 0 <= chunk_overlap < chunk_tokens", field="chunk_tokens"
        )
    job = ReindexJob(
        id=f"rx-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}",
        model=model, new_version=new_version_name(), old_version=get_active(settings), chunk_tokens=tokens,
        chunk_overlap=overlap, rechunk=chunk_tokens is not None or chunk_overlap is not None,
        force=bool(force),
        requested_by=requested_by, created_at_ms=now_ms(),
    )  # fmt: skip
    if not client.set(CURRENT_KEY, job.id, nx=True):
        running = current_job(client)
        if running is not None:
            raise ReindexRefused(f"reindex job {running.id} is still {running.status}", job_id=running.id)
        client.set(CURRENT_KEY, job.id)  # the slot named a job that has ended
    save_job(client, job)
    client.zadd(JOBS_KEY, {job.id: job.created_at_ms})
    audit(settings, client, "reindex_started", job=job.id, model=model, force=job.force, by=requested_by,
          chunk_tokens=tokens, chunk_overlap=overlap)  # fmt: skip
    return job


def cancel_job(settings: Settings, client: redis.Redis, job_id: str, *, by: str = "") -> ReindexJob:
    job = get_job(client, job_id)
    if job.terminal:
        raise ReindexRefused(f"job {job_id} already ended: {job.status}", job_id=job_id)
    client.set(CANCEL_KEY.format(job_id), "1")
    audit(settings, client, "reindex_cancel_requested", job=job_id, by=by)
    return job


# -- admin actions on versions (files and the catalog; no model) ---------------------------------------------


class VersionInfo(msgspec.Struct, kw_only=True):
    manifest: Manifest
    active: bool
    previous: bool  # the rollback target
    dropped: bool


def versions_info(settings: Settings) -> list[VersionInfo]:
    alias = read_alias(settings)
    return [
        VersionInfo(
            manifest=m,
            active=alias is not None and alias.version == m.version,
            previous=alias is not None and alias.previous == m.version,
            dropped=is_dropped(settings, m.version),
        )
        for m in list_versions(settings)
    ]


def rollback(
    settings: Settings,
    client: redis.Redis | None,
    *,
    by: str = "",
    force: bool = False,
    catalog: Catalog | None = None,
) -> PairAlias:
    """Switch the alias back to the previous pair (the same one write). The previous version must still
    hold exactly the catalog's documents (dual-write keeps it so) unless `force`."""
    alias = read_alias(settings)
    if alias is None or not alias.previous:
        raise ReindexRefused("no previous index version to roll back to")
    if client is not None and current_job(client) is not None:
        raise ReindexRefused("a reindex job is running: cancel it first")
    target = alias.previous
    manifest = read_manifest(settings, target)
    owns = catalog is None
    catalog = catalog or Catalog.for_data_dir(settings.data_path)
    try:
        with commit_guard(settings, alias.version, target):
            check = verify(settings, catalog, target, strict_ledger=False)
            if not check.exact and not force:
                raise ReindexRefused(f"rollback refused: {check.summary()}", version=target)
            switched = switch_pair(
                settings, target, manifest.model, embedder=alias.previous_embedder, previous=alias.version,
                previous_embedder=alias.embedder, reason="rollback",
            )  # fmt: skip
    finally:
        if owns:
            catalog.close()
    audit(
        settings, client, "rollback", to=target, from_=alias.version, by=by, forced=force, exact=check.exact
    )
    return switched


def retire(settings: Settings, client: redis.Redis | None, version: str, *, by: str = "") -> Manifest:
    """Drop a non-active version's data (catalog rows, Whoosh, USearch); its manifest stays, `retired`."""
    manifest = read_manifest(settings, version)
    alias = read_alias(settings)
    if alias is not None and alias.version == version:
        raise ReindexRefused(f"{version} is the active version", version=version)
    running = current_job(client) if client is not None else None
    if running is not None and running.new_version == version:
        raise ReindexRefused(f"{version} is being built by {running.id}: cancel it first", version=version)
    directory = version_path(settings, version)
    with commit_guard(settings, version):
        (directory / DROPPED_FILE).write_text(str(now_ms()))
        if manifest.state != "rejected":
            manifest = set_state(settings, version, "retired")
        catalog = Catalog.for_data_dir(settings.data_path)
        try:
            catalog.drop_version(version)
        finally:
            catalog.close()
        for path in directory.iterdir():
            if path.name.startswith("vectors-") or path.name in ("generation", "whoosh", LEDGER_FILE):
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        if alias is not None and alias.previous == version:
            atomic_write(alias_path(settings), _encoder.encode(msgspec.structs.replace(alias, previous=None)))
    audit(settings, client, "retire", version=version, by=by)
    return manifest


# -- the golden-set gate ----------------------------------------------------------------------------------


class GoldenSet(msgspec.Struct, kw_only=True):
    name: str
    queries: list[tuple[str, str]]  # (query id, text)
    qrels: dict[str, dict[str, int]]


def golden_dirs(settings: Settings) -> list[Path]:
    import os

    dirs = [GOLDEN_DEMO_DIR] if settings.golden_demo and GOLDEN_DEMO_DIR.is_dir() else []
    dirs += [Path(p) for p in settings.golden_dirs.split(os.pathsep) if p]
    return dirs


def load_golden(directory: Path, live: set[str]) -> GoldenSet | None:
    """A BEIR-layout golden set restricted to judged documents present in the catalog (None: nothing left)."""
    from index.evaluate import Query, _read_jsonl, read_qrels

    qrels_path, queries_path = directory / "qrels" / "test.tsv", directory / "queries.jsonl"
    if not qrels_path.exists() or not queries_path.exists():
        raise InputError(f"golden set {directory} needs queries.jsonl and qrels/test.tsv")
    qrels = {
        q: kept
        for q, judged in read_qrels(qrels_path).items()
        if (kept := {d: g for d, g in judged.items() if d in live})
    }
    queries = [(q._id, q.text) for q in _read_jsonl(queries_path, Query) if q._id in qrels]
    return GoldenSet(name=directory.name, queries=queries, qrels=qrels) if queries else None


def evaluate_version(
    settings: Settings, catalog: Catalog, version: str, embedder: Embedder, golden: GoldenSet, mode: Any
) -> dict[str, float]:
    from index.evaluate import dedupe_docs, score_run
    from index.search import Searcher

    principal = Principal(tenant=settings.golden_tenant, user="reindex-gate")
    searcher = Searcher(settings, version, embedder, catalog=catalog, check_interval_ms=0)
    try:
        results = searcher.search_many_sync(
            [text for _, text in golden.queries], principal, k=settings.retrieve_k, mode=mode
        )
    finally:
        searcher.close()
    run = {
        qid: dedupe_docs(h.doc_id for h in r.hits)
        for (qid, _), r in zip(golden.queries, results, strict=True)
    }
    return score_run(run, golden.qrels)


def run_gate(
    settings: Settings,
    catalog: Catalog,
    old: tuple[str, Embedder],
    new: tuple[str, Embedder],
    *,
    dirs: Sequence[Path] | None = None,
) -> GateReport:
    """Old vs new on every golden set: passed unless some metric drops by more than the tolerance."""
    live = set(live_documents(catalog))
    report = GateReport(passed=True, tolerance=settings.gate_tolerance)
    for directory in golden_dirs(settings) if dirs is None else dirs:
        golden = load_golden(directory, live)
        if golden is None:
            report.skipped.append(directory.name)
            continue
        report.sets.append(golden.name)
        report.queries += len(golden.queries)
        for mode in GATE_MODES:
            before = evaluate_version(settings, catalog, old[0], old[1], golden, mode)
            after = evaluate_version(settings, catalog, new[0], new[1], golden, mode)
            for metric in GATE_METRICS:
                regressed = before[metric] - after[metric] > settings.gate_tolerance + 1e-9
                report.deltas.append(
                    MetricDelta(golden_set=golden.name, mode=mode, metric=metric, old=before[metric],
                                new=after[metric], regressed=regressed)
                )  # fmt: skip
    worse = [d for d in report.deltas if d.regressed]
    if not report.sets:
        report.passed, report.reason = False, "no golden set judges any document of the catalog"
    elif worse:
        report.passed = False
        report.reason = "; ".join(
            f"{d.golden_set}/{d.mode} {d.metric} {d.old:.3f} -> {d.new:.3f}" for d in worse
        )
    return report


# -- the build (worker side) -------------------------------------------------------------------------------


class _Lease:
    """`reindex:lease:<job>` held by one worker, renewed by a thread; lost => the slice stops."""

    RENEW = (
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) "
        "else return 0 end"
    )
    RELEASE = (
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end"
    )

    def __init__(self, client: redis.Redis, job_id: str, lease_ms: int) -> None:
        self.client = client
        self.key = LEASE_KEY.format(job_id)
        self.lease_ms = lease_ms
        self.token = hashlib.sha1(f"{time.time_ns()}:{threading.get_ident()}".encode()).hexdigest()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        if not self.client.set(self.key, self.token, nx=True, px=self.lease_ms):
            return False
        self._thread = threading.Thread(target=self._renew, name="reindex-lease", daemon=True)
        self._thread.start()
        return True

    def remaining_ms(self) -> int:
        return max(0, int(self.client.pttl(self.key)))

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_ms / 3000):
            try:
                if not self.client.eval(self.RENEW, 1, self.key, self.token, self.lease_ms):
                    self.lost.set()
                    return
            except redis.RedisError as exc:
                log.warning("reindex lease renewal failed: %s", exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with suppress(redis.RedisError):
            self.client.eval(self.RELEASE, 1, self.key, self.token)


SliceResult = Literal["finished", "continue", "busy"]


class _Builder:
    """One slice of a job, in a worker that holds the job's lease."""

    def __init__(self, settings: Settings, client: redis.Redis, job: ReindexJob, catalog: Catalog) -> None:
        from index.embed import load_embedder

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
        from index.chunk import CHUNKER_VERSION
        from index.context import CONTEXT_VERSION
        from index.versions import create_version

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
        from index.ingest import Ingestor

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

    def source(self, doc: CatalogDocument) -> tuple[Document, list[Chunk], str]:
        from index.ingest import chunk_of

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

    def rechunk(self, doc: CatalogDocument, text: str) -> list[Chunk]:
        from index.chunk import chunk_document
        from index.context import deterministic_context
        from index.ingest import SPECIAL_TOKENS_RESERVE
        from index.parse import parse_document
        from index.types import ParsedDocument, Section

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
        parsed = msgspec.structs.replace(parsed, title=doc.title)
        return chunk_document(
            parsed, doc_id=doc.doc_id, access=Access(tenant=doc.tenant, readers=tuple(doc.readers)),
            max_tokens=self.job.chunk_tokens, overlap=self.job.chunk_overlap,
            count_tokens=self.base.count_tokens, context_for=deterministic_context,
            reserve_tokens=SPECIAL_TOKENS_RESERVE,
        )  # fmt: skip

    def build_one(self, doc: CatalogDocument) -> None:
        from index.ingest import ingest_hash

        started = time.perf_counter()
        try:
            document, chunks, text = self.source(doc)
        except DocentError as exc:
            now = self.catalog.get_document(doc.doc_id)
            if now is not None and _same_content(now, doc):  # else: changed meanwhile, the next pass has it
                self.job.failed_docs[doc.doc_id] = doc.content_hash
                self.error(doc.doc_id, exc)
            return
        if self.catalog.ingest_hash(self.job.new_version, doc.doc_id) == ingest_hash(document, chunks):
            # committed by a worker that died before its ledger write: nothing to embed again
            self.ledger.mark(doc.doc_id, doc.content_hash, len(chunks), embedded=False)
            self.job.docs_done += 1
            return
        texts = [chunk.indexed_text() for chunk in chunks]
        try:
            self.embedder.put(texts, self.base.embed(texts))  # outside the guard: the slow part
        except DocentError as exc:
            self.job.failed_docs[doc.doc_id] = doc.content_hash
            self.error(doc.doc_id, exc)
            return
        with commit_guard(self.settings, self._active_other()):  # the Ingestor locks the new version
            current = self.catalog.get_document(doc.doc_id)
            if current is None or not _same_content(current, doc):
                self.embedder.vectors.clear()
                return  # changed meanwhile (a dual-write has it, or the next pass does)
            try:
                self.ingestor.ingest_chunks(document, chunks, text=text)
            except (IngestError, InputError) as exc:
                self.job.failed_docs[doc.doc_id] = doc.content_hash
                self.error(doc.doc_id, exc)
                return
            finally:
                self.embedder.vectors.clear()
            self.ledger.mark(doc.doc_id, doc.content_hash, len(chunks), embedded=True)
        self.job.docs_done += 1
        self.job.docs_embedded += 1
        self.job.chunks_embedded += len(chunks)
        self.job.build_s += time.perf_counter() - started

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
        old = job.old_version
        with commit_guard(self.settings, old, job.new_version):
            check = verify(self.settings, self.catalog, job.new_version)
            if not check.exact:
                return check
            alias = read_alias(self.settings)
            previous_embedder = alias.embedder if alias is not None and alias.version == old else ""
            if old is not None:
                if not previous_embedder:
                    previous_embedder = embedder_for(
                        self.settings, read_manifest(self.settings, old), purpose="offline"
                    )[0]
                self.seed_ledger(old)
            switch_pair(
                self.settings, job.new_version, self.base.identity, embedder=job.model, previous=old,
                previous_embedder=previous_embedder, reason=f"reindex {job.id}",
            )  # fmt: skip
        return check

    def seed_ledger(self, version: str) -> None:
        """The outgoing version was the reference until now: record what it holds, for rollback checks."""
        live = live_documents(self.catalog)
        held = set(self.catalog.version_doc_ids(version))
        ledger = Ledger(self.settings, version)
        known = ledger.all()
        ledger.mark_many([(d, live[d].content_hash, 0) for d in held & live.keys() if d not in known])


def _same_content(a: CatalogDocument, b: CatalogDocument) -> bool:
    fields = ("doc_id", "title", "format", "content_hash", "tenant", "readers", "deleted")
    return all(getattr(a, f) == getattr(b, f) for f in fields)


def _finish(
    settings: Settings, client: redis.Redis, job: ReindexJob, status: JobStatus, message: str
) -> None:
    job.status = status
    job.message = message
    job.finished_at_ms = now_ms()
    job.eta_s = 0.0 if status == "done" else None
    if status != "done" and (version_path(settings, job.new_version) / "manifest.json").exists():
        with suppress(DocentError):
            if get_active(settings) != job.new_version:
                set_state(settings, job.new_version, "rejected")
    save_job(client, job)
    pipe = client.pipeline()
    pipe.delete(CANCEL_KEY.format(job.id))
    pipe.execute()
    with suppress(redis.RedisError):
        if client.get(CURRENT_KEY) in (job.id, job.id.encode()):
            client.delete(CURRENT_KEY)


def lower_priority() -> None:
    """Niceness BULK_NICE for the calling thread (Linux: per thread) and the threads it starts later, so
    offline work (a reindex worker) never starves the online query path."""
    with suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        if current < BULK_NICE:
            os.setpriority(os.PRIO_PROCESS, tid, BULK_NICE)


def run_slice(
    settings: Settings,
    client: redis.Redis,
    job_id: str,
    *,
    slice_s: float | None = None,
    catalog: Catalog | None = None,
    on_progress: Callable[[ReindexJob], None] | None = None,
) -> SliceResult:
    """Work on a job for about `slice_s` (default settings.reindex_slice_s). Safe to kill at any point."""
    job = get_job(client, job_id)
    if job.terminal:
        return "finished"
    lease = _Lease(client, job_id, settings.reindex_lease_ms)
    if not lease.acquire():
        return "busy"
    owns = catalog is None
    catalog = catalog or Catalog.for_data_dir(settings.data_path)
    builder: _Builder | None = None
    try:
        job = get_job(client, job_id)  # re-read under the lease
        if job.terminal:
            return "finished"
        deadline = time.monotonic() + (settings.reindex_slice_s if slice_s is None else slice_s)
        job.slices += 1
        try:
            builder = _Builder(settings, client, job, catalog)
            builder.ensure_version()
        except DocentError as exc:
            _finish(settings, client, job, "failed", f"{exc.code}: {exc.message}")
            return "finished"
        return _work(settings, client, builder, lease, deadline, on_progress)
    finally:
        if builder is not None:
            builder.close()
        if owns:
            catalog.close()
        lease.release()


def _work(
    settings: Settings,
    client: redis.Redis,
    builder: _Builder,
    lease: _Lease,
    deadline: float,
    on_progress: Callable[[ReindexJob], None] | None,
) -> SliceResult:
    job = builder.job
    rounds = 0
    while time.monotonic() < deadline and not lease.lost.is_set():
        if client.get(CANCEL_KEY.format(job.id)):
            _finish(settings, client, job, "cancelled", "cancelled by an admin")
            return "finished"
        todo, extra = builder.todo()
        if todo or extra:
            if job.status != "building":
                job.status = "building"
                builder.publish(force=True)
            builder.drop_extra(extra)
            for doc in todo:
                if (
                    time.monotonic() >= deadline
                    or lease.lost.is_set()
                    or client.get(CANCEL_KEY.format(job.id))
                ):
                    break
                builder.build_one(doc)
                builder.publish()
                if on_progress is not None:
                    on_progress(job)
            continue
        if job.failed_docs:
            _finish(settings, client, job, "failed", f"{len(job.failed_docs)} documents could not be built")
            return "finished"
        # Everything built: validate (once), then cut over.
        if job.gate is None:
            job.status = "validating"
            builder.publish(force=True)
            job.gate = builder.gate()
            if job.force and not job.gate.passed:
                job.gate.forced = True
                audit(
                    settings, client, "gate_forced", job=job.id, reason=job.gate.reason, by=job.requested_by
                )
            builder.publish(force=True)
        if not job.gate.passed and not job.force:
            _finish(settings, client, job, "rejected", f"golden-set gate: {job.gate.reason}")
            audit(settings, client, "reindex_rejected", job=job.id, reason=job.gate.reason)
            return "finished"
        check = builder.cutover()
        if check.exact:
            job.docs_done = job.docs_total = check.documents
            _finish(settings, client, job, "done", f"active: {job.new_version} with {job.model}")
            audit(settings, client, "cutover", job=job.id, version=job.new_version, model=job.model,
                  previous=job.old_version, forced=bool(job.gate and job.gate.forced))  # fmt: skip
            return "finished"
        rounds += 1
        log.info("cutover deferred: %s", check.summary())
        if rounds >= CUTOVER_ROUNDS:
            break
    builder.publish(force=True)
    return "continue"


def run_until_done(
    settings: Settings,
    client: redis.Redis,
    job_id: str,
    *,
    slice_s: float | None = None,
    catalog: Catalog | None = None,
    on_progress: Callable[[ReindexJob], None] | None = None,
) -> ReindexJob:
    """Slices back to back in this thread (tests, benchmarks, the CLI)."""
    while True:
        result = run_slice(
            settings, client, job_id, slice_s=slice_s, catalog=catalog, on_progress=on_progress
        )
        if result == "finished":
            return get_job(client, job_id)
        if result == "busy":
            time.sleep(0.2)


# -- dual-write: the ingest path while versions coexist ----------------------------------------------------


class Target(msgspec.Struct, frozen=True, kw_only=True):
    version: str
    embedder: str  # registered name; "" = find it by the manifest's identity
    chunk_tokens: int
    chunk_overlap: int
    role: Literal["active", "building", "previous"]


def write_targets(settings: Settings, client: redis.Redis | None) -> list[Target]:
    """Where an ingest goes now: the active version first, then a version being built, then the retained
    previous version (kept exact so a rollback loses nothing)."""
    alias = read_alias(settings)
    targets: list[Target] = []
    plain = {"chunk_tokens": settings.chunk_tokens, "chunk_overlap": settings.chunk_overlap}
    if alias is not None:
        targets.append(Target(version=alias.version, embedder=alias.embedder, role="active", **plain))
    job = current_job(client) if client is not None else None
    if job is not None and (version_path(settings, job.new_version) / "manifest.json").exists():
        with suppress(IndexNotFound):
            if read_manifest(settings, job.new_version).state in ("building", "validating"):
                targets.append(
                    Target(version=job.new_version, embedder=job.model, role="building",
                           chunk_tokens=job.chunk_tokens, chunk_overlap=job.chunk_overlap)
                )  # fmt: skip
    if alias is not None and alias.previous and not is_dropped(settings, alias.previous):
        with suppress(IndexNotFound):
            if read_manifest(settings, alias.previous).state == "retired":
                targets.append(
                    Target(version=alias.previous, embedder=alias.previous_embedder, role="previous", **plain)
                )
    unique: dict[str, Target] = {}
    for target in targets:
        unique.setdefault(target.version, target)
    return list(unique.values())


class DualWriter:
    """Ingest and delete through every current target; the active one first (its errors are the caller's),
    each other side retried `DUAL_WRITE_ATTEMPTS` times. All under the dual-write lock."""

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
        from index.embed import load_embedder
        from index.ingest import Ingestor

        manifest = read_manifest(self.settings, target.version)
        if target.embedder:
            embedder = load_embedder(self.settings, target.embedder, purpose="offline")
        else:
            embedder = embedder_for(self.settings, manifest, purpose="offline")[1]
        settings = msgspec.structs.replace(
            self.settings, chunk_tokens=target.chunk_tokens, chunk_overlap=target.chunk_overlap
        )
        from index.context import LLM_CONTEXT_VERSION

        with_llm = self.contextualizer if manifest.context_version == LLM_CONTEXT_VERSION else None
        return Ingestor(settings, embedder, target.version, catalog=self.catalog, contextualizer=with_llm)

    def _first_ingestor(self) -> Ingestor:
        """The ingestor that creates the first (active) version with the configured embedder."""
        from index.embed import load_embedder
        from index.ingest import Ingestor

        embedder = load_embedder(self.settings, purpose="offline")
        return Ingestor(self.settings, embedder, catalog=self.catalog, contextualizer=self.contextualizer)

    def _apply(self, step: Callable[[Ingestor], DocumentOutcome], doc_id: str) -> list[DocumentOutcome]:
        outcomes: list[DocumentOutcome] = []
        with dual_write_lock(self.settings):
            targets = write_targets(self.settings, self.client)
            if not targets:  # no index yet: the first ingest creates the active version
                with self._first_ingestor() as ingestor:
                    return [step(ingestor)]
            for n, target in enumerate(targets):
                attempts = 1 if n == 0 else DUAL_WRITE_ATTEMPTS
                for attempt in range(1, attempts + 1):
                    try:
                        with self._ingestor(target) as ingestor:
                            outcomes.append(step(ingestor))
                        self._record(target.version, doc_id)
                        break
                    except DocentError as exc:
                        if n == 0:
                            raise  # the caller's error: nothing was written elsewhere
                        if attempt == attempts:
                            self.failures += 1
                            log.warning("dual-write to %s failed for %s: %s", target.version, doc_id, exc)
                        else:
                            time.sleep(DUAL_WRITE_BACKOFF_S * 2 ** (attempt - 1))
        return outcomes

    def _record(self, version: str, doc_id: str) -> None:
        document = self.catalog.get_document(doc_id)
        ledger = Ledger(self.settings, version)
        if document is None or document.deleted:
            ledger.forget(doc_id)
        else:
            chunks = len(self.catalog.visible_chunks(version, doc_id))
            ledger.mark(doc_id, document.content_hash, chunks, embedded=False)

    def ingest_document(self, doc_id: str, **kwargs: Any) -> list[DocumentOutcome]:
        """`Ingestor.ingest_document` on every target; the first outcome is the active version's."""
        return self._apply(lambda ingestor: ingestor.ingest_document(doc_id, **kwargs), doc_id)

    def ingest_documents(self, requests: Sequence[tuple[str, dict[str, Any]]]) -> list[DocumentOutcome]:
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
            primary: list[DocumentOutcome] = []
            for n, target in enumerate(targets):
                try:
                    with self._ingestor(target) as ingestor:
                        report = ingestor.ingest_documents(requests)
                except DocentError as exc:
                    if n == 0:
                        raise
                    self.failures += len(requests)
                    log.warning("dual-write batch to %s failed: %s", target.version, exc)
                    continue
                mine = [o for o in report.documents if o.version == target.version]
                for outcome in mine:
                    if outcome.status == "failed":
                        self.failures += 1 if n > 0 else 0
                    else:
                        self._record(target.version, outcome.doc_id)
                if n == 0:
                    primary = mine
        return primary

    def ingest_chunks(
        self, document: Document, chunks: Sequence[Chunk], *, text: str | None = None
    ) -> list[DocumentOutcome]:
        return self._apply(
            lambda ingestor: ingestor.ingest_chunks(document, chunks, text=text), document.doc_id
        )

    def delete_document(self, doc_id: str, *, tenant: str | None = None) -> list[DocumentOutcome]:
        return self._apply(lambda ingestor: ingestor.delete_document(doc_id, tenant=tenant), doc_id)
