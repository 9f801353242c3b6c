"""The admin API over real HTTP and a real WebSocket: start a reindex, watch it live, roll back, retire."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
from websockets.sync.client import connect

from index.reindex.alias import read_alias
from index.reindex.run import run_until_done
from store.redis import sync_client
from store.settings import Settings
from tests.conftest import MODEL_CACHE
from tests.server_proc import TEST_ADMIN_KEY, ServerProcess, server_env
from tests.test_reindex import CORPUS, ingest_corpus, write_golden


def call(
    server: ServerProcess, method: str, path: str, body: object = None, key: str | None = TEST_ADMIN_KEY
) -> tuple[int, Any]:
    request = urllib.request.Request(
        server.http_url + path, method=method, data=None if body is None else json.dumps(body).encode()
    )
    if key is not None:
        request.add_header("X-Admin-Key", key)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_admin_routes_start_watch_roll_back_and_retire(tmp_path: Path, redis_url: str) -> None:
    golden = write_golden(tmp_path / "golden" / "office")
    env = server_env(
        redis_url, tmp_path / "data", model_dir=str(MODEL_CACHE), embed_model="hash", golden_demo="false",
        golden_dirs=str(golden), reindex_lease_ms="1500",
    )  # fmt: skip
    settings = Settings.from_env(env)
    client = sync_client(redis_url)
    docs = dict(list(CORPUS.items())[:8])
    ingest_corpus(settings, client, docs)
    old = read_alias(settings)
    assert old is not None
    with ServerProcess(env) as server:
        assert call(server, "POST", "/admin/reindex", {"model": "minilm"}, key=None)[0] == 401
        assert call(server, "POST", "/admin/reindex", {"model": "minilm"}, key="wrong")[0] == 401
        assert call(server, "POST", "/admin/reindex", {"model": "bert-9000"})[0] == 400
        assert call(server, "GET", "/admin/reindex/rx-unknown")[0] == 404

        frames: list[dict[str, Any]] = []
        ready, ended = threading.Event(), threading.Event()

        def watch() -> None:
            with connect(
                server.ws_url.replace("/ws/chat", "/ws/admin"),
                additional_headers={"X-Admin-Key": TEST_ADMIN_KEY},
            ) as ws:
                ready.set()
                while not ended.is_set():
                    try:
                        frames.append(json.loads(ws.recv(timeout=60)))  # a job step under load
                    except TimeoutError:
                        return
                    if frames[-1]["job"]["status"] in ("done", "rejected", "failed", "cancelled"):
                        ended.set()

        watcher = threading.Thread(target=watch)
        watcher.start()
        assert ready.wait(10)
        status, started = call(server, "POST", "/admin/reindex", {"model": "minilm"})
        assert status == 202 and started["job"]["status"] == "queued"
        job_id = started["job_id"]
        assert call(server, "POST", "/admin/reindex", {"model": "minilm"})[0] == 409  # one at a time

        # The enqueued message waits for a worker; this test plays the worker in-process.
        done = run_until_done(settings, client, job_id, slice_s=5.0)
        assert done.status == "done", done.message
        watcher.join(15)
        assert ended.is_set()
        statuses = [f["job"]["status"] for f in frames]
        assert statuses[-1] == "done" and "building" in statuses and "validating" in statuses

        status, job = call(server, "GET", f"/admin/reindex/{job_id}")
        assert status == 200 and job["docs_done"] == job["docs_total"] == len(docs) and job["gate"]["passed"]
        status, listing = call(server, "GET", "/admin/versions")
        assert status == 200 and listing["alias"]["version"] == done.new_version
        assert listing["alias"]["previous"] == old.version and listing["jobs"][0]["id"] == job_id

        assert call(server, "POST", f"/admin/versions/{done.new_version}/retire")[0] == 409  # active
        status, alias = call(server, "POST", "/admin/rollback", {})
        assert status == 200 and alias["version"] == old.version and alias["previous"] == done.new_version
        status, manifest = call(server, "POST", f"/admin/versions/{done.new_version}/retire")
        assert status == 200 and manifest["state"] == "retired"
        status, listing = call(server, "GET", "/admin/versions")
        dropped = {v["manifest"]["version"]: v["dropped"] for v in listing["versions"]}
        assert dropped == {old.version: False, done.new_version: True}
        assert call(server, "POST", "/admin/rollback", {})[0] == 409  # nothing to return to any more
    assert (
        msgspec.json.decode((settings.index_root / "audit.jsonl").read_bytes().splitlines()[-1])["action"]
        == "retire"
    )
    client.close()
