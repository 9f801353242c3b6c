"""The active index's golden-set recall re-measured (issue 14): after an ingest batch of N documents (one
message however the batch is split), on a schedule (one chain: a second message finds the slot taken), and
by an operator; the scores are served by `GET /admin/golden/recall` and `/metrics` (parsed with
prometheus-client's own parser) from a real web process, against a real Redis and a real index."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from actors.broker import INGEST_QUEUE, NAMESPACE, use_stub_broker

if dramatiq.broker.global_broker is None:  # before the actor module declares its actor
    use_stub_broker()

from actors.golden_recall_job import golden_recall
from actors.golden_schedule import GOLDEN_RECALL_ACTOR
from actors.ingestion import ingest_documents
from index.types import Access
from store import golden_recall as recall_store
from store.exceptions import InputError
from store.scripts import SyncRunner
from store.settings import get_settings
from tests.conftest import MODEL_CACHE
from tests.server_proc import TEST_ADMIN_KEY, ServerProcess, server_env

DOCS = {
    "receipts": ("Receipts", "Flight receipts go to the finance team within thirty days of travel."),
    "laptops": ("Laptops", "Lost laptops are reported to the security desk the same day."),
    "parking": ("Parking", "Visitors park in the north garage with a pass from reception."),
    "holidays": ("Holidays", "Unused holiday days carry over until the end of March."),
}
QUERIES = {"q1": ("where do flight receipts go", "receipts"), "q2": ("report a lost laptop", "laptops"),
           "q3": ("where do visitors park", "parking")}  # fmt: skip


def write_golden(directory: Path) -> Path:
    (directory / "qrels").mkdir(parents=True)
    lines = [json.dumps({"_id": q, "text": text}) for q, (text, _) in QUERIES.items()]
    (directory / "queries.jsonl").write_text("\n".join(lines) + "\n")
    rows = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{doc}\t1" for q, (_, doc) in QUERIES.items()]
    (directory / "qrels" / "test.tsv").write_text("\n".join(rows) + "\n")
    return directory


@pytest.fixture
def env(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    values = {
        "DOCENT_DATA_DIR": str(tmp_path / "data"), "DOCENT_REDIS_URL": redis_url,
        "DOCENT_MODEL_DIR": str(MODEL_CACHE), "DOCENT_EMBED_MODEL": "hash", "DOCENT_LLM_BACKEND": "none",
        "DOCENT_GOLDEN_DEMO": "0", "DOCENT_GOLDEN_DIRS": str(write_golden(tmp_path / "handbook")),
        "DOCENT_GOLDEN_RECALL_INTERVAL_S": "600", "DOCENT_GOLDEN_RECALL_AFTER_DOCS": "3",
    }  # fmt: skip
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()  # golden_recall reads get_settings(): this env, and no later test's
    yield values
    get_settings.cache_clear()


def ingest(settings_env: dict[str, str], names: list[str]) -> None:
    from store.settings import Settings

    requests = [
        (name, {"data": f"# {DOCS[name][0]}\n\n{DOCS[name][1]}\n".encode(), "fmt": "md",
                "title": DOCS[name][0], "access": Access(tenant="default")})
        for name in names
    ]  # fmt: skip
    ingest_documents(Settings.from_env(settings_env), requests)


def queued(client: redis.Redis, delayed: bool = False) -> list[Any]:
    """golden_recall messages waiting in the ingest queue (or its delay queue), as their args."""
    key = f"{NAMESPACE}:{INGEST_QUEUE}{'.DQ' if delayed else ''}.msgs"
    messages = [json.loads(m) for m in client.hvals(key)]  # type: ignore[union-attr]
    return [m["args"] for m in messages if m["actor_name"] == GOLDEN_RECALL_ACTOR]


def scores(client: redis.Redis) -> list[recall_store.GoldenScore]:
    return SyncRunner(client).run(recall_store.latest_plan())


def test_an_ingest_batch_and_the_schedule_each_measure_once(env: dict[str, str]) -> None:
    client = redis.Redis.from_url(env["DOCENT_REDIS_URL"])
    ingest(env, ["receipts", "laptops"])
    assert queued(client) == []  # 2 of 3 documents: no measurement yet
    ingest(env, ["parking", "holidays"])
    assert queued(client) == [["ingest"]]  # the batch completed once: one message
    assert client.get(recall_store.PENDING_DOCS) is None  # the counter starts again

    golden_recall("ingest")
    latest = scores(client)
    assert [(s.golden_set, s.mode, s.trigger, s.queries) for s in latest] == [
        ("handbook", "dense", "ingest", 3), ("handbook", "hybrid", "ingest", 3)
    ]  # fmt: skip
    assert all(s.recall_at_20 == 1.0 and s.ndcg_at_10 > 0.5 for s in latest), latest

    client.delete(recall_store.DUE)
    golden_recall("schedule")  # claims the slot, measures, sends the chain's next message
    golden_recall("schedule")  # a duplicate chain's message: the slot is taken, nothing runs
    history = SyncRunner(client).run(recall_store.history_plan(10))
    assert [s.trigger for s in history] == ["schedule", "schedule", "ingest", "ingest"]
    assert queued(client, delayed=True) == [["schedule"]]
    assert 0 < client.pttl(recall_store.DUE) <= 540_000  # 90% of the 600 s interval
    with pytest.raises(InputError):
        golden_recall("whenever")
    client.close()


def test_the_admin_api_and_metrics_serve_the_newest_scores(env: dict[str, str], tmp_path: Path) -> None:
    client = redis.Redis.from_url(env["DOCENT_REDIS_URL"])
    ingest(env, list(DOCS))
    golden_recall("admin")
    web_env = server_env(env["DOCENT_REDIS_URL"], tmp_path / "data")
    with ServerProcess(web_env) as web:
        status, body = fetch(f"{web.http_url}/admin/golden/recall?history=5", TEST_ADMIN_KEY)
        assert status == 200 and [s["mode"] for s in body["latest"]] == ["dense", "hybrid"]
        assert len(body["history"]) == 2 and body["latest"][0]["golden_set"] == "handbook"
        assert fetch(f"{web.http_url}/admin/golden/recall", None)[0] == 401
        assert fetch(f"{web.http_url}/admin/golden/recall?history=9999", TEST_ADMIN_KEY)[0] == 400
        status, queued_body = fetch(f"{web.http_url}/admin/golden/recall", TEST_ADMIN_KEY, method="POST")
        assert status == 202 and queued_body["queued"] is True and ["admin"] in queued(client)

        request = urllib.request.Request(f"{web.http_url}/metrics", headers={"X-Admin-Key": TEST_ADMIN_KEY})
        with urllib.request.urlopen(request, timeout=10) as response:
            families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    recall = {s.labels["mode"]: s.value for s in families["docent_golden_recall_at_20_ratio"].samples}
    assert recall == {"dense": 1.0, "hybrid": 1.0}
    assert len(families["docent_golden_ndcg_at_10_ratio"].samples) == 2
    client.close()


def fetch(url: str, admin_key: str | None, method: str = "GET") -> tuple[int, Any]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if admin_key is not None:
        request.add_header("X-Admin-Key", admin_key)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
