"""Reindex: rebuild while ingesting and querying, exact cutover, golden-set gate, rollback, model checks.

Real Redis (conftest), real MiniLM (converted once into the shared model cache), real index files. The
job runs in-process here (`run_until_done`); tests/test_reindex_kill.py runs it in a killed worker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import redis

from index.embed import load_embedder
from index.reindex.admin import rollback, versions_info
from index.reindex.alias import read_alias, switch_pair
from index.reindex.audit import read_audit
from index.reindex.dualwrite import DualWriter
from index.reindex.jobs import ReindexJob, cancel_job, start_job
from index.reindex.ledger import Ledger
from index.reindex.run import run_until_done
from index.reindex.verify import live_documents, verify
from index.search import Searcher, SearchService
from index.types import Principal
from index.versions import get_active, read_manifest
from store.catalog import Catalog
from store.exceptions import ModelMismatch, ReindexRefused
from store.redis import sync_client
from store.settings import Settings

READER = Principal(tenant="default", user="tester")

# Distinct topics; golden queries paraphrase them (few shared words), so a model that knows no meaning
# (the "hash" embedder) loses to MiniLM on dense retrieval.
CORPUS: dict[str, str] = {
    "kb/parental-leave": "New parents may take sixteen weeks of paid time off after the birth or adoption "
    "of a child. Tell your manager a month ahead.",
    "kb/expenses": "Claims for business spending must include the original receipt and be filed within "
    "thirty days of purchase through the finance portal.",
    "kb/vpn": "To reach internal systems from home, install the tunnel client and sign in with your "
    "hardware security key before opening the intranet.",
    "kb/fire-drill": "When the alarm sounds, leave by the nearest stairway, never the elevator, and gather "
    "at the assembly point in the north car park.",
    "kb/laptop-refresh": "Company notebooks are replaced every three years; order the new machine from the "
    "IT catalogue and hand back the old one within two weeks.",
    "kb/cafeteria": "The canteen serves breakfast from seven and lunch from noon; vegetarian and vegan "
    "meals are available every day.",
    "kb/parking": "Employees can reserve a spot in the garage through the facilities app; electric "
    "vehicle chargers are on level two.",
    "kb/password-policy": "Login secrets must be at least fourteen characters long, are never reused, and "
    "must be changed immediately if you suspect a leak.",
    "kb/travel-booking": "Book flights and hotels through the approved agency; economy class for trips "
    "under six hours, and trains when the journey is shorter than four hours.",
    "kb/onboarding": "During the first week newcomers meet their buddy, receive equipment, and complete "
    "the mandatory compliance training modules.",
    "kb/remote-work": "Staff may work from home up to three days a week if their team lead agrees and the "
    "role does not require presence on site.",
    "kb/performance-review": "Appraisals happen twice a year; employees write a self assessment and "
    "discuss goals and feedback with their supervisor.",
    "kb/sick-leave": "If you are ill, notify your manager before ten in the morning; a doctor's note is "
    "needed from the fourth day of absence.",
    "kb/data-retention": "Customer records are kept for seven years and then deleted; backups are purged "
    "on the same schedule.",
    "kb/gym": "A fitness room with treadmills and weights is open around the clock in the basement; "
    "showers and lockers are next to it.",
    "kb/printer": "Printing on the shared devices requires tapping your badge; colour pages are billed to "
    "the department.",
}
GOLDEN: dict[str, tuple[str, str]] = {
    "q1": ("how long is maternity or paternity leave", "kb/parental-leave"),
    "q2": ("reimbursement of costs I paid for work", "kb/expenses"),
    "q3": ("connect to the corporate network while travelling", "kb/vpn"),
    "q4": ("what to do during an emergency evacuation", "kb/fire-drill"),
    "q5": ("when do I get a replacement computer", "kb/laptop-refresh"),
    "q6": ("food options at the office", "kb/cafeteria"),
    "q7": ("where can I leave my car", "kb/parking"),
    "q8": ("rules for choosing credentials", "kb/password-policy"),
    "q9": ("arranging a business trip", "kb/travel-booking"),
    "q10": ("first days for a new hire", "kb/onboarding"),
    "q11": ("am I allowed to telecommute", "kb/remote-work"),
    "q12": ("yearly evaluation of employees", "kb/performance-review"),
    "q13": ("I have the flu and cannot come in", "kb/sick-leave"),
    "q14": ("how long is client information stored", "kb/data-retention"),
    "q15": ("exercise facilities at work", "kb/gym"),
    "q16": ("cost of making copies in colour", "kb/printer"),
}


def write_golden(directory: Path) -> Path:
    (directory / "qrels").mkdir(parents=True, exist_ok=True)
    encoder = msgspec.json.Encoder()
    lines = [encoder.encode({"_id": q, "text": text}) for q, (text, _) in GOLDEN.items()]
    (directory / "queries.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    qrels = ["query-id\tcorpus-id\tscore", *(f"{q}\t{doc}\t1" for q, (_, doc) in GOLDEN.items())]
    (directory / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n")
    return directory


def reindex_settings(settings: Settings, tmp_path: Path, **changes: object) -> Settings:
    golden = write_golden(tmp_path / "golden" / "office")
    values: dict[str, object] = {
        "golden_demo": False,
        "golden_dirs": str(golden),
        "reindex_lease_ms": 1500,
        "gate_tolerance": 0.05,
        **changes,
    }
    return msgspec.structs.replace(settings, **values)


def ingest_corpus(settings: Settings, client: redis.Redis, docs: dict[str, str] = CORPUS) -> None:
    with DualWriter(settings, client) as writer:
        for doc_id, text in docs.items():
            writer.ingest_document(doc_id, data=text.encode(), fmt="txt", title=doc_id.split("/")[-1])


def top_doc(searcher: Searcher, query: str) -> str:
    hits = searcher.search_sync(query, READER, k=3, mode="dense").hits
    return hits[0].doc_id if hits else ""


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = sync_client(redis_url)
    yield c
    c.close()


def test_rebuild_while_ingesting_and_querying_cuts_over_exactly_and_rolls_back(
    settings: Settings, tmp_path: Path, client: redis.Redis
) -> None:
    settings = reindex_settings(settings, tmp_path)
    ingest_corpus(settings, client)
    old = get_active(settings)
    assert old is not None
    job = start_job(settings, client, model="minilm-rot", requested_by="test")
    with pytest.raises(ReindexRefused):
        start_job(settings, client, model="minilm-rot")  # one rebuild at a time

    mid_build, writes_done = threading.Event(), threading.Event()

    def on_progress(progress: ReindexJob) -> None:
        if progress.docs_done >= 5 and not mid_build.is_set():
            mid_build.set()
            writes_done.wait(30)  # hold the build mid-way while the test writes through the ingest path

    finished: list[ReindexJob] = []
    builder = threading.Thread(
        target=lambda: finished.append(
            run_until_done(settings, client, job.id, slice_s=1.0, on_progress=on_progress)
        )
    )

    # Queries run all along, through the cutover: each must be answered by a consistent pair.
    service = SearchService(settings, check_interval_ms=0)
    answers: list[tuple[str, str, str]] = []  # (version, expected doc, top doc)
    failures: list[BaseException] = []
    stop_queries = threading.Event()
    probes = [
        (text, doc) for doc, text in CORPUS.items() if doc not in ("kb/gym", "kb/printer", "kb/parking")
    ]

    def query_loop() -> None:
        n = 0
        while not stop_queries.is_set():
            text, doc = probes[n % len(probes)]
            n += 1
            try:
                searcher = service.current()  # the pair this query stays on
                assert searcher.embedder.identity == read_manifest(settings, searcher.version).model
                answers.append((searcher.version, doc, top_doc(searcher, text)))
            except BaseException as exc:
                failures.append(exc)

    querier = threading.Thread(target=query_loop)
    querier.start()
    builder.start()
    assert mid_build.wait(60)
    with DualWriter(settings, client) as writer:
        # changed before (kb/cafeteria is built early: sorted ids) and after the build passed it,
        writer.ingest_document("kb/cafeteria", data=b"The canteen now opens at six and closes at three.",
                               fmt="txt", title="cafeteria")  # fmt: skip
        writer.ingest_document("kb/travel-booking", data=b"All trips are booked by the travel desk by email.",
                               fmt="txt", title="travel")  # fmt: skip
        writer.ingest_document("kb/new-bikes", data=b"Bicycle racks and a repair stand are by the entrance.",
                               fmt="txt", title="bikes")  # fmt: skip
        writer.delete_document("kb/gym")
        writer.delete_document("kb/printer")
    writes_done.set()
    builder.join(120)
    time.sleep(0.3)
    stop_queries.set()
    querier.join(30)

    (done,) = finished
    assert done.status == "done", (done.message, done.error_samples)
    assert done.gate is not None and done.gate.passed and done.gate.sets == ["office"]
    assert done.docs_embedded <= len(CORPUS) + 1 and done.chunks_per_s > 0
    alias = read_alias(settings)
    assert alias is not None and alias.version == job.new_version and alias.previous == old
    assert (
        alias.embedder == "minilm-rot"
        and alias.model == load_embedder(settings, "minilm-rot", purpose="offline").identity
    )

    catalog = Catalog.for_data_dir(settings.data_path)
    try:
        live = live_documents(catalog)
        assert (
            set(catalog.version_doc_ids(job.new_version))
            == set(live)
            == set(CORPUS) - {"kb/gym", "kb/printer"} | {"kb/new-bikes"}
        )
        assert verify(settings, catalog, job.new_version).exact
        assert Ledger(settings, job.new_version).all() == {d: doc.content_hash for d, doc in live.items()}
        assert verify(settings, catalog, old, strict_ledger=False).exact  # dual-write kept the old one exact
    finally:
        catalog.close()

    assert not failures, failures[:3]
    versions_seen = {v for v, _, _ in answers}
    assert versions_seen == {old, job.new_version}
    assert all(
        expected == top
        for _, expected, top in answers
        if expected not in ("kb/cafeteria", "kb/travel-booking")
    )
    assert service.current().version == job.new_version
    assert top_doc(service.current(), "bicycle parking and repairs") == "kb/new-bikes"

    # After the cutover the previous version still receives writes, so a rollback loses nothing.
    with DualWriter(settings, client) as writer:
        outcomes = writer.ingest_document("kb/library", data=b"The library lends books for four weeks.",
                                          fmt="txt", title="library")  # fmt: skip
    assert [o.version for o in outcomes] == [job.new_version, old]
    back = rollback(settings, client, by="test")
    assert (
        back.version == old and back.previous == job.new_version and back.embedder == alias.previous_embedder
    )
    assert service.current().version == old
    assert top_doc(service.current(), "borrowing books") == "kb/library"
    assert [e["action"] for e in read_audit(settings)][-2:] == ["cutover", "rollback"]
    info = {v.manifest.version: v for v in versions_info(settings)}
    assert (
        info[old].active
        and info[job.new_version].previous
        and info[job.new_version].manifest.state == "retired"
    )
    service.close()


def test_query_vectors_of_another_model_are_refused_by_the_manifest_check(
    settings: Settings, tmp_path: Path, client: redis.Redis
) -> None:
    settings = reindex_settings(settings, tmp_path)
    ingest_corpus(settings, client, {k: CORPUS[k] for k in list(CORPUS)[:3]})
    version = get_active(settings)
    assert version is not None
    rotated = load_embedder(settings, "minilm-rot", purpose="online")
    with pytest.raises(ModelMismatch):
        Searcher(settings, version, rotated)  # minilm-rot query vectors, minilm index
    with pytest.raises(ModelMismatch):
        switch_pair(settings, version, rotated.identity, embedder="minilm-rot", previous=None)
    assert read_alias(settings) is not None and get_active(settings) == version


def test_a_degraded_model_is_rejected_by_the_gate_and_forcing_it_is_audited(
    settings: Settings, tmp_path: Path, client: redis.Redis
) -> None:
    settings = reindex_settings(settings, tmp_path)
    ingest_corpus(settings, client)
    old = get_active(settings)
    job = start_job(settings, client, model="hash")
    rejected = run_until_done(settings, client, job.id, slice_s=5.0)
    assert rejected.status == "rejected"
    assert rejected.gate is not None and not rejected.gate.passed
    assert any(d.regressed and d.mode == "dense" and d.metric == "ndcg@10" for d in rejected.gate.deltas)
    assert get_active(settings) == old and read_manifest(settings, job.new_version).state == "rejected"
    with pytest.raises(ReindexRefused):
        rollback(settings, client)  # nothing was switched: there is no previous pair

    forced = start_job(settings, client, model="hash", force=True, requested_by="admin-test")
    result = run_until_done(settings, client, forced.id, slice_s=5.0)
    assert result.status == "done" and result.gate is not None and result.gate.forced
    assert get_active(settings) == forced.new_version
    actions = [(e["action"], e.get("by")) for e in read_audit(settings)]
    assert ("gate_forced", "admin-test") in actions and actions[-1][0] == "cutover"
    rollback(settings, client, by="test")
    assert get_active(settings) == old


def test_a_cancelled_job_leaves_the_active_version_alone(
    settings: Settings, tmp_path: Path, client: redis.Redis
) -> None:
    settings = reindex_settings(settings, tmp_path)
    ingest_corpus(settings, client, {k: CORPUS[k] for k in list(CORPUS)[:4]})
    old = get_active(settings)
    job = start_job(settings, client, model="minilm-rot")
    cancel_job(settings, client, job.id, by="test")
    ended = run_until_done(settings, client, job.id, slice_s=5.0)
    assert ended.status == "cancelled" and get_active(settings) == old
    again = start_job(settings, client, model="minilm-rot")  # the slot is free again
    assert again.id != job.id
