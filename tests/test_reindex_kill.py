"""A reindex worker (a real dramatiq worker process) SIGKILLed twice mid-build still finishes the job, and
no document finished before a kill is embedded again."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
import redis

from actors.api import enqueue_reindex
from index.reindex.alias import read_alias
from index.reindex.jobs import ReindexJob, get_job, start_job
from index.reindex.ledger import Ledger
from index.reindex.verify import live_documents, verify
from index.versions import get_active
from store.catalog import Catalog
from store.redis import sync_client
from store.settings import Settings
from tests.conftest import MODEL_CACHE, REPO
from tests.test_reindex import CORPUS, ingest_corpus, write_golden

FILLER_DOCS = 40
FILLER_WORDS = 600  # about three 256-token chunks per document
WORKER_READY_TIMEOUT_S = 60.0


def filler_corpus() -> dict[str, str]:
    rng = random.Random(7)
    vocabulary = [
        "policy",
        "team",
        "budget",
        "quarter",
        "review",
        "office",
        "contract",
        "vendor",
        "meeting",
        "report",
        "schedule",
        "project",
        "client",
        "invoice",
        "audit",
        "storage",
        "backup",
        "network",
        "server",
        "printer",
        "badge",
        "training",
        "holiday",
        "payroll",
        "pension",
        "desk",
    ]
    return {
        f"filler/{n:03d}": " ".join(rng.choice(vocabulary) for _ in range(FILLER_WORDS)) + "."
        for n in range(FILLER_DOCS)
    }


def worker_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCENT_")}
    env.update(
        PYTHONPATH=str(REPO),
        DOCENT_DATA_DIR=settings.data_dir,
        DOCENT_MODEL_DIR=str(MODEL_CACHE),
        DOCENT_REDIS_URL=settings.redis_url,
        DOCENT_LLM_BACKEND="none",
        DOCENT_EMBED_MODEL=settings.embed_model,
        DOCENT_GOLDEN_DEMO="false",
        DOCENT_GOLDEN_DIRS=settings.golden_dirs,
        DOCENT_GATE_TOLERANCE=str(settings.gate_tolerance),
        DOCENT_REINDEX_LEASE_MS=str(settings.reindex_lease_ms),
        DOCENT_REINDEX_SLICE_S=str(settings.reindex_slice_s),
        DOCENT_BROKER_HEARTBEAT_TIMEOUT_MS=str(settings.broker_heartbeat_timeout_ms),
        DOCENT_BROKER_MAINTENANCE_CHANCE="1000000",
    )
    return env


@pytest.fixture
def workers(settings: Settings) -> Iterator[Callable[[Settings], subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(s: Settings) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "actors.reindex"], cwd=REPO, env=worker_env(s),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_for(
    client: redis.Redis, job_id: str, done: Callable[[ReindexJob], bool], timeout_s: float
) -> ReindexJob:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = get_job(client, job_id)
        if done(job):
            return job
        time.sleep(0.05)
    raise AssertionError(f"timed out: {get_job(client, job_id)}")


def test_a_worker_killed_twice_mid_build_resumes_without_redoing_finished_documents(
    settings: Settings, tmp_path: Path, redis_url: str, workers: Callable[[Settings], subprocess.Popen[bytes]]
) -> None:
    golden = write_golden(tmp_path / "golden" / "office")
    settings = msgspec.structs.replace(
        settings, embed_model="hash", golden_demo=False, golden_dirs=str(golden), gate_tolerance=0.05,
        reindex_lease_ms=1500, reindex_slice_s=2, broker_heartbeat_timeout_ms=1500,
    )  # fmt: skip
    client = sync_client(redis_url)
    ingest_corpus(settings, client, {**CORPUS, **filler_corpus()})  # with the fast "hash" model
    old = get_active(settings)
    total = len(CORPUS) + FILLER_DOCS

    job = start_job(settings, client, model="minilm", requested_by="test")
    enqueue_reindex(settings, job.id)
    ledger = Ledger(settings, job.new_version)
    snapshots: list[dict[str, int]] = []
    worker = workers(settings)
    for kill_at in (6, 24):
        wait_for(client, job.id, lambda j, n=kill_at: j.docs_done >= n, WORKER_READY_TIMEOUT_S)  # type: ignore[misc]
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        snapshots.append(ledger.runs())
        assert get_job(client, job.id).status == "building"
        worker = workers(settings)

    finished = wait_for(client, job.id, lambda j: j.terminal, 90)
    assert finished.status == "done", (finished.message, finished.error_samples)
    assert finished.slices >= 3
    runs = ledger.runs()
    for snapshot in snapshots:
        assert snapshot and all(runs[doc_id] == 1 for doc_id in snapshot)  # finished before a kill: kept
    assert len(runs) == total and max(runs.values()) <= 2 and sum(runs.values()) <= total + 2
    assert finished.docs_embedded <= total + 2
    alias = read_alias(settings)
    assert alias is not None and alias.version == job.new_version and alias.previous == old
    catalog = Catalog.for_data_dir(settings.data_path)
    try:
        assert set(catalog.version_doc_ids(job.new_version)) == set(live_documents(catalog))
        assert verify(settings, catalog, job.new_version).exact
    finally:
        catalog.close()
    client.close()
