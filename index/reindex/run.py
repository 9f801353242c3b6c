"""Running a job: a time slice under the job's lease (what the reindex actor calls), or slices back to back.

A slice takes the lease, builds what the checkpoint says is left, then (everything built) runs the gate
once and cuts over; a cutover that finds the new version inexact goes back to building the difference,
at most CUTOVER_ROUNDS times a slice. Safe to kill at any point: the next slice resumes.

Worker side: loads numpy, the embedder and the indexes (through index.reindex.builder).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Literal, TypedDict, Unpack

import redis

from index.reindex.audit import audit
from index.reindex.builder import Builder
from index.reindex.jobs import GateReport, ReindexJob, cancel_requested, finish_job, get_job
from index.reindex.lease import Lease
from store.catalog import Catalog
from store.catalog_types import CatalogDocument
from store.exceptions import DocentError
from store.settings import Settings

log = logging.getLogger(__name__)

CUTOVER_ROUNDS = 5  # verify -> rebuild the difference -> verify, at most this often per slice
BULK_NICE = 10  # the building thread (and the embedder threads it starts) yields the CPU to queries
BUSY_RETRY_S = 0.2

SliceResult = Literal["finished", "continue", "busy"]
ProgressFn = Callable[[ReindexJob], None]


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
    on_progress: ProgressFn | None = None,
) -> SliceResult:
    """Work on a job for about `slice_s` (default settings.reindex_slice_s). Safe to kill at any point."""
    if get_job(client, job_id).terminal:
        return "finished"
    lease = Lease(client, job_id, settings.reindex_lease_ms)
    if not lease.acquire():
        return "busy"
    owns = catalog is None
    catalog = catalog or Catalog.for_data_dir(settings.data_path)
    try:
        deadline = time.monotonic() + (settings.reindex_slice_s if slice_s is None else slice_s)
        return _leased_slice(settings, client, job_id, catalog, lease, deadline, on_progress)
    finally:
        if owns:
            catalog.close()
        lease.release()


def _leased_slice(
    settings: Settings,
    client: redis.Redis,
    job_id: str,
    catalog: Catalog,
    lease: Lease,
    deadline: float,
    on_progress: ProgressFn | None,
) -> SliceResult:
    job = get_job(client, job_id)  # re-read under the lease
    if job.terminal:
        return "finished"
    job.slices += 1
    builder = _open_builder(settings, client, job, catalog)
    if builder is None:
        return "finished"
    try:
        return _Slice(settings, client, builder, lease, deadline, on_progress).work()
    finally:
        builder.close()


def _open_builder(
    settings: Settings, client: redis.Redis, job: ReindexJob, catalog: Catalog
) -> Builder | None:
    """The job's builder, its new version created; None: the job failed (recorded as such)."""
    builder: Builder | None = None
    try:
        builder = Builder(settings, client, job, catalog)
        builder.ensure_version()
        return builder
    except DocentError as exc:
        if builder is not None:
            builder.close()
        finish_job(settings, client, job, "failed", f"{exc.code}: {exc.message}")
        return None


@dataclass
class _Slice:
    settings: Settings
    client: redis.Redis
    builder: Builder
    lease: Lease
    deadline: float
    on_progress: ProgressFn | None

    @property
    def job(self) -> ReindexJob:
        return self.builder.job

    def running(self) -> bool:
        return time.monotonic() < self.deadline and not self.lease.lost.is_set()

    def work(self) -> SliceResult:
        rounds = 0
        while self.running():
            if cancel_requested(self.client, self.job.id):
                finish_job(self.settings, self.client, self.job, "cancelled", "cancelled by an admin")
                return "finished"
            todo, extra = self.builder.todo()
            if todo or extra:
                self.build(todo, extra)
                continue
            if self.conclude():
                return "finished"
            rounds += 1
            if rounds >= CUTOVER_ROUNDS:
                break
        self.builder.publish(force=True)
        return "continue"

    def build(self, todo: list[CatalogDocument], extra: list[str]) -> None:
        if self.job.status != "building":
            self.job.status = "building"
            self.builder.publish(force=True)
        self.builder.drop_extra(extra)
        for doc in todo:
            if not self.running() or cancel_requested(self.client, self.job.id):
                break
            self.builder.build_one(doc)
            self.builder.publish()
            if self.on_progress is not None:
                self.on_progress(self.job)

    def conclude(self) -> bool:
        """Everything built: fail, gate, or cut over. False: the cutover found a difference to rebuild."""
        job = self.job
        if job.failed_docs:
            self.finish("failed", f"{len(job.failed_docs)} documents could not be built")
            return True
        gate = job.gate if job.gate is not None else self.validate()
        if not gate.passed and not job.force:
            self.finish("rejected", f"golden-set gate: {gate.reason}")
            audit(self.settings, self.client, "reindex_rejected", job=job.id, reason=gate.reason)
            return True
        return self.cut_over()

    def validate(self) -> GateReport:
        """Run the gate (once per job); a forced job goes on past a failed gate (audited)."""
        job = self.job
        job.status = "validating"
        self.builder.publish(force=True)
        job.gate = gate = self.builder.gate()
        if job.force and not gate.passed:
            gate.forced = True
            audit(self.settings, self.client, "gate_forced", job=job.id, reason=gate.reason,
                  by=job.requested_by)  # fmt: skip
        self.builder.publish(force=True)
        return gate

    def cut_over(self) -> bool:
        job = self.job
        check = self.builder.cutover()
        if not check.exact:
            log.info("cutover deferred: %s", check.summary())
            return False
        job.docs_done = job.docs_total = check.documents
        self.finish("done", f"active: {job.new_version} with {job.model}")
        audit(self.settings, self.client, "cutover", job=job.id, version=job.new_version, model=job.model,
              previous=job.old_version, forced=bool(job.gate and job.gate.forced))  # fmt: skip
        return True

    def finish(self, status: Literal["done", "rejected", "failed"], message: str) -> None:
        finish_job(self.settings, self.client, self.job, status, message)


class SliceOptions(TypedDict, total=False):
    """run_slice's keyword options, which run_until_done passes on to each slice."""

    slice_s: float | None
    catalog: Catalog | None
    on_progress: ProgressFn | None


def run_until_done(
    settings: Settings, client: redis.Redis, job_id: str, **options: Unpack[SliceOptions]
) -> ReindexJob:
    """Slices back to back in this thread (tests, benchmarks, the CLI)."""
    while True:
        result = run_slice(settings, client, job_id, **options)
        if result == "finished":
            return get_job(client, job_id)
        if result == "busy":
            time.sleep(BUSY_RETRY_S)
