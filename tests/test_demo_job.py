"""The background demo ingest (actors/demo_job.py), in-process against the real Redis: a few standard-library
modules rendered in a child process, ingested into the active version in checkpointed slices, the progress
record saved (and published) at each commit; a run that is done is not queued again. The killed-worker
and admin-console side is tests/test_demo_background.py."""

from __future__ import annotations

import msgspec
import pytest
import redis

from actors.bootstrap import prepare
from actors.broker import DEMO_ACTOR, INGEST_QUEUE, NAMESPACE
from actors.demo_background import NAME, run_slice, schedule
from actors.ingestion import ingest_documents
from index.demo import PYDOC_MODULES
from index.versions import get_active, list_versions
from store import ingest_progress as progress
from store.catalog import Catalog
from store.redis import sync_client
from store.settings import Settings

SEED = b"The core pages are in before the stack is up."
MODULES = ("colorsys", "copy", "timeit", "atexit", "bisect")  # small pages: seconds, not minutes


def seeded(settings: Settings) -> Settings:
    """The "hash" embedder, one page per commit, and an active version (as the core pages make it)."""
    settings = msgspec.structs.replace(settings, embed_model="hash", demo_slice_docs=2, demo_slice_s=3600)
    seeded = ingest_documents(settings, [("seed", {"data": SEED, "fmt": "txt", "title": "seed"})])
    assert [o.status for o in seeded] == ["indexed"]
    return settings


def events(client: redis.Redis) -> list[progress.IngestProgress]:
    decoder = msgspec.json.Decoder(progress.IngestProgress)
    found = []
    for _, fields in client.xrange(progress.STREAM.key):
        data = progress.STREAM.record_of(fields)
        assert data is not None
        found.append(decoder.decode(data))
    return found


def test_a_run_ingests_the_pages_in_checkpointed_slices_into_the_active_version(
    settings: Settings, redis_url: str
) -> None:
    settings = seeded(settings)
    version = get_active(settings)
    client = sync_client(redis_url)
    try:
        record = run_slice(settings, client, MODULES)
        assert record.status == "done", record
        assert record.docs_total == record.docs_done == len(MODULES) == record.docs_indexed
        assert record.chunks_done == record.chunks_embedded > 0
        assert record.chunks_total_est == record.chunks_done and record.eta_s == 0.0
        assert record.bytes_done == record.bytes_total > 0 and record.chunks_per_s > 0
        # Published at every commit: running, 2 pages, 4, 5, then done; the checkpoint only grows.
        seen = [e for e in events(client) if e.name == NAME]
        done_counts = [e.docs_done for e in seen]
        assert done_counts == sorted(done_counts) and {2, 4, 5} <= set(done_counts)
        assert seen[-1].status == "done" and seen[0].status == "running"
        assert progress.load(client, NAME) == record

        # Same version, one copy of each page.
        assert get_active(settings) == version and [m.version for m in list_versions(settings)] == [version]
        catalog = Catalog.for_data_dir(settings.data_path)
        try:
            ids = set(catalog.version_doc_ids(version))
        finally:
            catalog.close()
        assert {f"pydoc/{m}" for m in MODULES} <= ids

        # Done: another run does nothing, and scheduling it sends no message.
        assert run_slice(settings, client, MODULES).docs_indexed == len(MODULES)
        before = client.xlen(progress.STREAM.key)
        assert schedule(settings, client, MODULES).status == "done"
        assert client.xlen(progress.STREAM.key) == before
    finally:
        client.close()


def test_a_run_that_stops_goes_on_from_its_checkpoint_and_a_new_fingerprint_starts_over(
    settings: Settings, redis_url: str
) -> None:
    settings = seeded(settings)
    client = sync_client(redis_url)
    try:
        queued = schedule(settings, client, MODULES)  # no worker here: the message waits on its queue
        assert queued.status == "queued" and queued.docs_done == 0
        first = run_slice(settings, client, MODULES[:3])
        assert first.status == "done"
        assert first.fingerprint != queued.fingerprint  # another module list: a fresh record
        # A slice ends at its deadline (checked after each commit); the next one starts at the checkpoint.
        partial = msgspec.structs.replace(settings, demo_slice_s=1, demo_slice_docs=1)
        record = run_slice(partial, client, MODULES)
        assert record.fingerprint == queued.fingerprint and record.docs_done >= 1
        while record.status != "done":
            record = run_slice(partial, client, MODULES)
        assert record.docs_done == len(MODULES)
        # The first three were ingested by the other run: unchanged, not copied again.
        assert record.docs_unchanged == 3 and record.docs_indexed == 2
    finally:
        client.close()


def queued_messages(client: redis.Redis) -> list[bytes]:
    """demo_ingest messages waiting on the ingest queue (dramatiq's Redis broker keeps them in a hash)."""
    messages: list[bytes] = client.hvals(f"{NAMESPACE}:{INGEST_QUEUE}.msgs")  # type: ignore[assignment]
    return [m for m in messages if DEMO_ACTOR.encode() in m]


def test_the_first_start_ingests_the_core_pages_and_queues_the_rest_once(
    settings: Settings, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = msgspec.structs.replace(settings, embed_model="hash", demo_modules="all")
    client = sync_client(redis_url)
    try:
        prepare(settings)  # what `docent run` runs before it starts the servers
        assert "ingesting in the background" in capsys.readouterr().out
        catalog = Catalog.for_data_dir(settings.data_path)
        try:
            ids = set(catalog.version_doc_ids(str(get_active(settings))))
        finally:
            catalog.close()
        assert {f"pydoc/{m}" for m in PYDOC_MODULES} <= ids and "pydoc/timeit" not in ids
        record = progress.load(client, NAME)
        assert record is not None and record.status == "queued"
        assert len(queued_messages(client)) == 1
        schedule(settings, client)  # another start before the run is done: one more message, same record
        assert len(queued_messages(client)) == 2 and progress.load(client, NAME) == record
        progress.save(client, msgspec.structs.replace(record, status="done"))
        assert schedule(settings, client).status == "done"  # once done: not queued again
        assert len(queued_messages(client)) == 2
    finally:
        client.close()
