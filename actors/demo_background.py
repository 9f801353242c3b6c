"""The background demo ingest: the standard library's pages past the core ones (actor: actors/demo_job.py).

`docent run` ingests the core demo pages before the stack is up (actors/bootstrap.py), then `schedule`
queues `demo_ingest(modules)` on the ingest queue ("" = every renderable standard-library module but the
core ones). The run, `run_slice` once per message:

1. renders the pages once, in a child process (index/demo_pages.py), into the demo source dir, and keeps
   their list beside them (`rest-<fingerprint>.json`), so later messages do not render again;
2. ingests them in their fixed order through the dual writer into the active index version (no new
   version: chunks are added like any upload), `settings.demo_slice_docs` pages per commit, and saves the
   progress record after each commit (store/ingest_progress.py: pages and chunks done / total, chunks/s,
   ETA), which `/ws/admin` pushes to the admin console;
3. works `settings.demo_slice_s` seconds per message, then sends itself again, so uploads queued meanwhile
   are not stuck behind the whole run.

Resumable: the record's `docs_done` is the checkpoint (only committed pages are counted); a killed worker's
message is redelivered after the broker's heartbeat timeout, and its lease (`settings.demo_lease_ms`)
expires, so the next message goes on from there. A page ingested twice is `unchanged` (the ingest hash),
never a second copy of its chunks. A record whose fingerprint (Python version, active index version, the
module list) differs from the run's starts over.
"""

from __future__ import annotations

import hashlib
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec
import redis

from actors.api import send
from actors.broker import DEMO_ACTOR, INGEST_QUEUE
from actors.ingestion import DocumentRequest, ingest_documents
from index.demo import DemoDoc
from index.demo_pages import render
from index.entries import DocumentOutcome
from index.parse import demo_source_dir
from index.reindex.lease import Lease
from index.versions import get_active
from store import ingest_progress as progress
from store.clock import now_ms
from store.ingest_progress import IngestProgress
from store.settings import Settings

NAME = progress.DEMO

_docs_decoder = msgspec.json.Decoder(list[DemoDoc])


def fingerprint(settings: Settings, modules: Sequence[str]) -> str:
    """What a run covers: a new Python, a new index version or another module list starts over."""
    listed = hashlib.sha1(",".join(modules).encode()).hexdigest()[:12]
    return f"python {platform.python_version()} · {get_active(settings)} · modules {listed}"


def demo_request(doc: DemoDoc, root: Path) -> DocumentRequest:
    path = Path(doc.path) if Path(doc.path).is_absolute() else root / doc.path
    return doc.doc_id, {"path": path, "title": doc.title, "access": doc.access, "source": doc.source or None}


def schedule(settings: Settings, client: redis.Redis, modules: Sequence[str] = ()) -> IngestProgress:
    """Queue the run unless this fingerprint's run is done; a new fingerprint starts a fresh record."""
    record = progress.load(client, NAME)
    mark = fingerprint(settings, modules)
    if record is not None and record.fingerprint == mark and record.status == "done":
        return record
    if record is None or record.fingerprint != mark:
        record = IngestProgress(name=NAME, fingerprint=mark, message="queued for the ingest worker")
        progress.save(client, record)
    send(settings, INGEST_QUEUE, DEMO_ACTOR, ",".join(modules))
    return record


def _pages(root: Path, modules: Sequence[str], mark: str) -> list[DemoDoc]:
    """The run's pages in their fixed order, rendered once per fingerprint."""
    listing = root / f"rest-{hashlib.sha1(mark.encode()).hexdigest()[:16]}.json"
    if listing.exists():
        return _docs_decoder.decode(listing.read_bytes())
    root.mkdir(parents=True, exist_ok=True)
    return render(root, listing, modules)


def _count(record: IngestProgress, outcomes: Sequence[DocumentOutcome], docs: Sequence[DemoDoc]) -> None:
    record.docs_done += len(docs)
    record.bytes_done += sum(_size(d) for d in docs)
    for outcome in outcomes:
        record.chunks_done += outcome.chunks
        record.chunks_embedded += outcome.embedded
        if outcome.status == "indexed":
            record.docs_indexed += 1
        elif outcome.status == "unchanged":
            record.docs_unchanged += 1
        elif outcome.status == "failed":
            record.docs_failed += 1
            progress.add_error(record, f"{outcome.doc_id}: {outcome.error_code} {outcome.error}")


def _rates(record: IngestProgress, chunks_at_start: int, started: float) -> None:
    elapsed = time.perf_counter() - started
    if record.bytes_done:
        record.chunks_total_est = max(
            record.chunks_done, round(record.chunks_done * record.bytes_total / record.bytes_done)
        )
    if elapsed > 0 and record.chunks_done > chunks_at_start:
        record.chunks_per_s = round((record.chunks_done - chunks_at_start) / elapsed, 1)
        record.eta_s = round(max(0, record.chunks_total_est - record.chunks_done) / record.chunks_per_s, 1)


def _size(doc: DemoDoc) -> int:
    try:
        return Path(doc.path).stat().st_size
    except OSError:
        return 0


def run_slice(
    settings: Settings, client: redis.Redis, modules: Sequence[str], lease: Lease | None = None
) -> IngestProgress:
    """Work on the run for `settings.demo_slice_s` seconds; the record says whether it is done."""
    mark = fingerprint(settings, modules)
    record = progress.load(client, NAME)
    if record is None or record.fingerprint != mark:
        record = IngestProgress(name=NAME, fingerprint=mark)
    if record.status == "done":
        return record
    if record.status != "running":
        record.status, record.started_at_ms, record.message = "running", now_ms(), "rendering the pages"
        progress.save(client, record)
    root = demo_source_dir(settings)
    docs = _pages(root, modules, mark)
    if record.docs_total != len(docs):
        record.docs_total, record.bytes_total = len(docs), sum(_size(d) for d in docs)
    record.message = "ingesting"
    started, chunks_at_start = time.perf_counter(), record.chunks_done
    size = settings.demo_slice_docs
    while record.docs_done < len(docs) and time.perf_counter() - started < settings.demo_slice_s:
        if lease is not None and lease.lost.is_set():
            return record  # another worker has the run now
        batch = docs[record.docs_done : record.docs_done + size]
        outcomes = ingest_documents(settings, [demo_request(d, root) for d in batch])
        _count(record, outcomes, batch)
        _rates(record, chunks_at_start, started)
        progress.save(client, record)
    if record.docs_done >= len(docs):
        record.status, record.finished_at_ms, record.eta_s = "done", now_ms(), 0.0
        record.message = f"{record.docs_done} pages, {record.chunks_done} chunks"
        progress.save(client, record)
    return record


def record_failure(client: redis.Redis, exc: Exception) -> None:
    """Shown in the console; the message is retried (RETRY) and goes on from the checkpoint."""
    record = progress.load(client, NAME)
    if record is not None:
        record.message = f"retrying after {type(exc).__name__}: {exc}"[:300]
        progress.add_error(record, record.message)
        progress.save(client, record)
