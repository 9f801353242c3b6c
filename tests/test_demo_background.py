"""The background demo ingest end to end: a real ingest worker (`dramatiq actors.worker --queues ingest`)
SIGKILLed mid-run, restarted, and the run finishing from its checkpoint with one copy of every page, in
one index version; meanwhile the admin console (real web process, headless Chromium) follows its progress
live over /ws/admin. Screenshots of the card mid-run and at the end go to the test's tmp dir (and to
$DOCENT_SCREENSHOT_DIR when set). Skipped when /usr/bin/chromium is absent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.demo_background import NAME, schedule
from actors.ingestion import ingest_documents
from index.versions import get_active, list_versions
from store import ingest_progress as progress
from store.catalog import Catalog
from store.redis import sync_client
from store.settings import Settings
from tests.conftest import MODEL_CACHE, REPO
from tests.server_proc import TEST_ADMIN_KEY, ServerProcess, server_env
from tests.test_admin_page import browser  # noqa: F401  (the fixture)
from tests.test_browser import CHROMIUM
from tests.test_demo_job import SEED
from tests.test_folder_sync import index_state

MODULES = ("colorsys", "copy", "timeit", "atexit", "bisect", "keyword", "sched", "graphlib")
WAIT_MS = 20_000
RUN_TIMEOUT_S = 90.0
WORKER_POLL_MS = 50

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (make browser)"),
]


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return server_env(
        redis_url, tmp_path / "data", model_dir=str(MODEL_CACHE), embed_model="hash", demo_slice_docs="1",
        demo_slice_s="1", demo_lease_ms="1500", broker_heartbeat_timeout_ms="1500",
        broker_maintenance_chance="1000000",
    )  # fmt: skip


class Workers:
    """Ingest workers as `docent run` starts them (a dramatiq master and its forked worker process)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = {**env, "PYTHONPATH": str(REPO), "dramatiq_worker_timeout": str(WORKER_POLL_MS)}
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        dramatiq = str(Path(sys.executable).parent / "dramatiq")
        command = [dramatiq, "actors.worker", "--queues", "ingest", "--processes", "1", "--threads", "1"]
        process = subprocess.Popen(command, cwd=REPO, env=self.env, start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        self.started.append(process)
        return process

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL the master and its forked worker at once (their process group)."""
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                self.kill(process)


@pytest.fixture
def workers(env: dict[str, str]) -> Iterator[Workers]:
    started = Workers(env)
    yield started
    started.stop_all()


def wait_record(client: Any, done: Any, timeout_s: float = RUN_TIMEOUT_S) -> progress.IngestProgress:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = progress.load(client, NAME)
        if record is not None and done(record):
            return record
        time.sleep(0.02)
    raise AssertionError(f"timed out: {progress.load(client, NAME)}")


async def card_text(page: Any, selector: str) -> str:
    return str(await page.locator(f".admin-ingest-card {selector}").text_content() or "")


async def screenshot(page: Any, path: Path) -> None:
    await page.locator(".admin-ingest-card").screenshot(path=str(path))
    if shots := os.environ.get("DOCENT_SCREENSHOT_DIR"):
        await page.locator(".admin-ingest-card").screenshot(path=str(Path(shots) / path.name))


async def test_a_killed_ingest_worker_resumes_the_demo_run_while_the_console_shows_its_progress(
    browser: Any,  # noqa: F811
    env: dict[str, str],
    redis_url: str,
    tmp_path: Path,
    workers: Workers,
) -> None:
    settings = Settings.from_env(env)
    seeded = ingest_documents(settings, [("seed", {"data": SEED, "fmt": "txt", "title": "seed"})])
    assert [o.status for o in seeded] == ["indexed"]  # the active version, as the core pages make it
    version = get_active(settings)
    client = sync_client(redis_url)
    with ServerProcess(env, app="server.app:create_app") as web:
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(f"{web.http_url}/admin")
        await page.fill(".admin-key-input", TEST_ADMIN_KEY)
        await page.click(".admin-key-save")
        await page.wait_for_selector('.admin-ws[data-state="connected"]', timeout=WAIT_MS)
        assert await page.locator(".admin-ingest-card").is_hidden()  # no background run yet

        # Queued: the card appears live, with the run not counted yet.
        schedule(settings, client, MODULES)
        await page.wait_for_selector('.admin-ingest-card[data-status="queued"]', timeout=WAIT_MS)

        # A worker takes it; killed once two pages are committed.
        worker = workers.start()
        killed_at = wait_record(client, lambda r: r.docs_done >= 2)
        workers.kill(worker)
        frozen = progress.load(client, NAME)
        assert frozen is not None and frozen.status == "running" and frozen.docs_done < len(MODULES)
        await page.wait_for_function(
            "n => document.querySelector('.admin-ingest-docs').textContent.startsWith(n + ' / ')",
            arg=str(frozen.docs_done), timeout=WAIT_MS,
        )  # fmt: skip
        assert await card_text(page, ".admin-ingest-status") == "running"
        assert f" / {len(MODULES)} (" in await card_text(page, ".admin-ingest-docs")
        assert "≈" in await card_text(page, ".admin-ingest-chunks")
        assert await card_text(page, ".admin-ingest-rate") not in ("", "—")
        assert await card_text(page, ".admin-ingest-eta") not in ("",)
        value = await page.locator(".admin-ingest-progress").evaluate("p => [p.value, p.max]")
        assert value == [frozen.docs_done, len(MODULES)]
        await screenshot(page, tmp_path / "demo-ingest-running.png")

        # A new worker: the dead one's message comes back after its heartbeat, the lease expires, and
        # the run goes on from the checkpoint to the end.
        workers.start()
        finished = wait_record(client, lambda r: r.status == "done")
        await page.wait_for_selector('.admin-ingest-card[data-status="done"]', timeout=WAIT_MS)
        assert (await card_text(page, ".admin-ingest-docs")).startswith(f"{len(MODULES)} / {len(MODULES)}")
        assert (await card_text(page, ".admin-ingest-eta")).startswith("done ")
        await screenshot(page, tmp_path / "demo-ingest-done.png")
        assert errors == []
    client.close()

    # At most the page being written at the kill was done again (as `unchanged`: no second copy).
    assert finished.docs_done == finished.docs_total == len(MODULES)
    assert finished.docs_indexed + finished.docs_unchanged == len(MODULES)
    assert finished.docs_unchanged <= 1 and finished.docs_failed == 0
    assert killed_at.docs_done >= 2
    # One index version, every page once; catalog, USearch and Whoosh agree.
    assert [m.version for m in list_versions(settings)] == [version] == [get_active(settings)]
    documents, chunks, vectors, entries = index_state(settings, "default")
    assert documents == len(MODULES) + 1 and chunks == vectors == entries
    catalog = Catalog.for_data_dir(settings.data_path)
    try:
        assert not catalog.hidden_keys(str(version))
        assert {f"pydoc/{m}" for m in MODULES} <= set(catalog.version_doc_ids(str(version)))
    finally:
        catalog.close()
