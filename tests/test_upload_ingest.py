"""Upload → ingest queue → worker → searchable: the web process, a dramatiq worker and Redis, all real."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from index.search import SearchService
from index.types import Principal
from store.redis import EmbeddedRedis
from store.settings import Settings
from tests.server_proc import REPO, TEST_ADMIN_KEY, ServerProcess, server_env

INDEXED_WITHIN_S = 60.0
POLICY = b"# Travel policy\n\nReceipts for flights go to the finance team within thirty days of travel.\n"


@pytest.fixture
def ingest_worker(redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[dict[str, str]]:
    env = server_env(redis_server.url, tmp_path, embed_model="hash", allowed_roots=str(tmp_path))
    command = [sys.executable, "-m", "dramatiq", "actors.worker", "--queues", "ingest",
               "--processes", "1", "--threads", "1"]  # fmt: skip
    worker = subprocess.Popen(command, env=env, cwd=REPO, start_new_session=True)
    try:
        yield env
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


def multipart(filename: str, content: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: text/markdown\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def test_an_uploaded_document_becomes_searchable_for_its_tenant(ingest_worker: dict[str, str]) -> None:
    settings = Settings.from_env(ingest_worker)
    with ServerProcess(ingest_worker, app="server.app:create_app") as web:
        body, content_type = multipart("travel-policy.md", POLICY)
        url = f"{web.http_url}/api/documents?tenant=acme"
        request = urllib.request.Request(url, data=body, method="POST")
        request.add_header("Content-Type", content_type)
        request.add_header("X-Admin-Key", TEST_ADMIN_KEY)
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202

    service = SearchService(settings)
    try:
        deadline = time.monotonic() + INDEXED_WITHIN_S
        hits: list[str] = []
        while time.monotonic() < deadline and not hits:
            with contextlib.suppress(Exception):  # no index version until the worker's first commit
                result = service.search_sync("flight receipts finance", Principal(tenant="acme", user="u"))
                hits = [h.text for h in result.hits]
            time.sleep(0.2)
        assert any("thirty days" in text for text in hits)
        other = service.search_sync("flight receipts finance", Principal(tenant="other", user="u"))
        assert not other.hits  # another tenant never sees it
    finally:
        service.close()
