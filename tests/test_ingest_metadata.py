"""Metadata given at upload and at `docent ingest` (issue 12): validated by store.metadata before anything is
stored, kept in the catalog, filterable at once (the documents API and search) and kept by a reingest.
The web process, a dramatiq ingest worker, the CLI and Redis are all real; every request is real HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from index.search import SearchService
from index.types import Principal
from store.exceptions import InputError
from store.metadata import SearchFilters, metadata_from_pairs
from store.settings import Settings
from tests.server_proc import REPO, TEST_ADMIN_KEY, ServerProcess
from tests.test_upload_ingest import ingest_worker  # noqa: F401  (the fixture)

INDEXED_WITHIN_S = 60.0
POLICY = b"# Travel policy\n\nReceipts for flights go to the finance team within thirty days of travel.\n"
META = {"author": "Ada", "tags": ["travel", "finance"], "fields": {"department": "ops"}}


def multipart(filename: str, content: bytes, metadata: str | None) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = b""
    if metadata is not None:
        parts += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n"
                  f"{metadata}\r\n").encode()  # fmt: skip
    parts += (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: text/markdown\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return parts, f"multipart/form-data; boundary={boundary}"


def call(url: str, *, data: bytes | None = None, method: str = "GET", content_type: str = "") -> Any:
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("X-Admin-Key", TEST_ADMIN_KEY)
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def listed(base: str, filters: dict[str, Any]) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"tenant": "acme", "filters": json.dumps(filters)})
    status, page = call(f"{base}/api/documents?{query}")
    assert status == 200, page
    documents: list[dict[str, Any]] = page["documents"]
    return documents


def wait_listed(base: str, filters: dict[str, Any]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + INDEXED_WITHIN_S
    while time.monotonic() < deadline:
        if found := listed(base, filters):
            return found
        time.sleep(0.2)
    raise AssertionError(f"nothing listed for {filters}")


def test_upload_metadata_is_stored_filterable_and_kept_by_a_reingest(
    ingest_worker: dict[str, str],  # noqa: F811
) -> None:
    settings = Settings.from_env(ingest_worker)
    with ServerProcess(ingest_worker, app="server.app:create_app") as web:
        base = web.http_url
        # Bad metadata: refused with a typed error naming the field; nothing stored, nothing queued.
        body, content_type = multipart("bad.md", POLICY, json.dumps({"author": "Ada", "colour": "red"}))
        status, error = call(f"{base}/api/documents?tenant=acme", data=body, method="POST",
                             content_type=content_type)  # fmt: skip
        assert status == 400 and error["code"] == "bad_input" and error["field"] == "metadata"
        assert not list((settings.data_path / "uploads").rglob("bad*"))

        body, content_type = multipart("travel-policy.md", POLICY, json.dumps(META))
        status, uploaded = call(f"{base}/api/documents?tenant=acme", data=body, method="POST",
                                content_type=content_type)  # fmt: skip
        assert status == 202 and uploaded["metadata"] == META
        (document,) = wait_listed(base, {"author": "Ada", "tags_all": ["travel", "finance"]})
        assert document["metadata"] == META
        assert listed(base, {"author": "Grace"}) == []

        service = SearchService(settings)
        try:
            alice = Principal(tenant="acme", user="alice")
            finance, grace = SearchFilters(tags_any=("finance",)), SearchFilters(author="Grace")
            hits = service.search_sync("flight receipts", alice, filters=finance)
            assert [h.doc_id for h in hits.hits] == [document["doc_id"]]
            assert not service.search_sync("flight receipts", alice, filters=grace).hits
        finally:
            service.close()

        path = f"{base}/api/documents/{urllib.parse.quote(document['doc_id'], safe='')}"
        status, before = call(f"{path}?tenant=acme")
        status, _ = call(f"{path}/reingest?tenant=acme", method="POST", data=b"")
        assert status == 202
        deadline, detail = time.monotonic() + INDEXED_WITHIN_S, before
        while time.monotonic() < deadline and detail["last_ingest"] == before["last_ingest"]:
            time.sleep(0.2)
            status, detail = call(f"{path}?tenant=acme")
        assert detail["last_ingest"] != before["last_ingest"] and detail["metadata"] == META


def docent(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "server.cli", *args]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_docent_ingest_takes_repeated_meta_pairs(tmp_path: Path, redis_url: str) -> None:
    from index.ingest import path_doc_id
    from store.catalog import Catalog
    from tests.server_proc import server_env

    env = server_env(redis_url, tmp_path / "data", embed_model="hash", allowed_roots=str(tmp_path))
    source = tmp_path / "docs"
    source.mkdir()
    (source / "leave.md").write_bytes(b"# Leave\n\nParental leave lasts sixteen weeks at full pay.\n")

    refused = docent(env, "ingest", str(source), "--tenant", "acme", "--meta", "created=yesterday")
    assert refused.returncode == 2 and "bad_input" in refused.stderr and "created" in refused.stderr
    assert not (tmp_path / "data" / "indexes").exists()  # nothing was ingested

    done = docent(env, "ingest", str(source), "--tenant", "acme", "--meta", "author=Ada",
                  "--meta", "tags=hr,policy", "--meta", "tags=leave", "--meta", "modified=2026-01-02",
                  "--meta", "department=people")  # fmt: skip
    assert done.returncode == 0, done.stderr
    settings = Settings.from_env(env)
    catalog = Catalog.for_data_dir(settings.data_path)
    try:
        document = catalog.get_document(path_doc_id(settings, source / "leave.md"))
    finally:
        catalog.close()
    assert document is not None and document.metadata.author == "Ada"
    assert document.metadata.tags == ("hr", "policy", "leave")
    assert document.metadata.modified_ms == 1767312000000  # 2026-01-02T00:00Z
    assert document.metadata.fields == {"department": "people"}
    service = SearchService(settings)
    try:
        alice = Principal(tenant="acme", user="alice")
        both, grace = SearchFilters(tags_all=("hr", "leave")), SearchFilters(author="Grace")
        assert service.search_sync("parental leave", alice, filters=both).hits
        assert not service.search_sync("parental leave", alice, filters=grace).hits
    finally:
        service.close()


def test_meta_pairs_are_parsed_and_checked() -> None:
    metadata = metadata_from_pairs(["author=Ada", "path=hr/leave.md", "tags=a, b", "created_ms=5", "x=1"])
    assert metadata.author == "Ada" and metadata.path == "hr/leave.md" and metadata.tags == ("a", "b")
    assert metadata.created_ms == 5 and metadata.fields == {"x": "1"}
    assert metadata_from_pairs(["modified=2026-01-02T00:00:00+01:00"]).modified_ms == 1767308400000
    for bad in (["author"], ["=x"], ["created_ms=soon"], ["Bad-Key=1"], ["created=1969-01-01"],
                [f"f{n}=v" for n in range(40)], ["author=" + "x" * 600]):  # fmt: skip
        with pytest.raises(InputError):
            metadata_from_pairs(bad)
