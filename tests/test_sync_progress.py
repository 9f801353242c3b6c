"""Folder-sync progress live (issue 12): documents done / total, rate and ETA, published on `sync:events`
(store.sync_progress) by a real `sync_folder`, relayed by the real web process's `/ws/admin` to a real
`websockets` client, and shown by the admin console's documents card in headless Chromium."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from actors.folder_sync import sync_folder
from store.keys import SYNC_EVENTS
from store.redis import sync_client
from store.settings import Settings
from store.sync_progress import STALE_AFTER_MS, ProgressPublisher, SyncProgress, running
from tests.server_proc import TEST_ADMIN_KEY, ServerProcess, server_env
from tests.test_admin_page import browser  # noqa: F401 (the headless Chromium fixture)
from tests.test_browser import CHROMIUM, SCREENSHOTS

FILES = 150  # three ingest slices of 64
WAIT_MS = 45_000  # a headless Chromium page across the web process and Redis, on a loaded machine


@pytest.fixture
def env(tmp_path: Path, redis_url: str) -> dict[str, str]:
    sync_client(redis_url).delete(SYNC_EVENTS)
    return server_env(redis_url, tmp_path / "data", embed_model="hash", allowed_roots=str(tmp_path))


@contextlib.contextmanager
def admin_socket(server: ServerProcess, *, following: bool = True) -> Iterator[ClientConnection]:
    url = server.ws_url.replace("/ws/chat", "/ws/admin")
    with connect(url, additional_headers={"X-Admin-Key": TEST_ADMIN_KEY}) as ws:
        if following:  # the pong comes once the socket follows the streams
            ws.send(json.dumps({"type": "ping"}))
            while json.loads(ws.recv(timeout=30))["type"] != "pong":
                pass
        yield ws


def sync_frames(ws: ClientConnection, until: str = "completed") -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    while not frames or frames[-1]["phase"] != until:
        frame = json.loads(ws.recv(timeout=60))
        if frame["type"] == "sync":
            frames.append(frame["progress"])
    return frames


def test_a_syncs_progress_reaches_admin_sockets_live(tmp_path: Path, env: dict[str, str]) -> None:
    root = tmp_path / "handbook"
    root.mkdir()
    for n in range(FILES):
        (root / f"note-{n:03}.md").write_text(
            f"# Note {n}\n\nThe note number {n} talks about topic {n % 7}.\n"
        )
    settings = Settings.from_env(env)
    shown: list[SyncProgress] = []
    with ServerProcess(env) as server, admin_socket(server) as ws:
        report = sync_folder(settings, root, tenant="acme", progress=shown.append)
        frames = sync_frames(ws)
    assert report.added == FILES
    assert all(f["source"] == str(root.resolve()) and f["tenant"] == "acme" for f in frames)
    assert frames[0]["phase"] == "running" and frames[0]["done"] == 0 and frames[0]["total"] == FILES
    done = [f["done"] for f in frames]
    assert done == sorted(done) and frames[-1] == {
        **frames[-1],
        "phase": "completed",
        "done": FILES,
        "eta_s": 0.0,
    }
    finished = [f for f in frames if f["phase"] == "running" and f["done"] == FILES]
    assert finished and finished[0]["rate_per_s"] > 0 and finished[0]["eta_s"] == 0.0
    # The CLI's callback saw every slice (it is not throttled): 0, 64, 128, 150.
    assert [p.done for p in shown] == [0, 64, 128, 150] and all(p.total == FILES for p in shown)
    assert all(p.eta_s is not None for p in shown[1:])


def test_a_socket_opened_mid_sync_gets_the_syncs_running(env: dict[str, str]) -> None:
    client = sync_client(env["DOCENT_REDIS_URL"])
    clock = [0.0]
    busy = ProgressPublisher(client, source="/srv/busy", tenant="acme", clock=lambda: clock[0])
    busy(SyncProgress(done=40, total=100, rate_per_s=12.5, eta_s=4.8))
    over = ProgressPublisher(client, source="/srv/over", tenant="acme", clock=lambda: clock[0])
    over(SyncProgress(done=1, total=1, rate_per_s=3.0, eta_s=0.0))
    over.finish("completed")
    with ServerProcess(env) as server, admin_socket(server, following=False) as ws:
        first = json.loads(ws.recv(timeout=30))
        assert first["type"] == "sync" and first["progress"]["source"] == "/srv/busy"
        assert first["progress"]["done"] == 40 and first["progress"]["eta_s"] == 4.8
        clock[0] = 1.0
        busy(SyncProgress(done=100, total=100, rate_per_s=20.0, eta_s=0.0))
        busy.finish("completed")
        frames = sync_frames(ws)
    assert [f["done"] for f in frames] == [100, 100] and frames[-1]["phase"] == "completed"


def test_updates_are_throttled_and_stale_syncs_are_not_running(redis_url: str) -> None:
    client = sync_client(redis_url)
    client.delete(SYNC_EVENTS)
    clock = [0.0]
    seen: list[int] = []
    live = ProgressPublisher(client, source="/a", tenant="t", clock=lambda: clock[0],
                             then=lambda p: seen.append(p.done))  # fmt: skip
    for done, at in ((0, 0.0), (1, 0.1), (2, 0.2), (3, 0.3), (4, 0.35), (5, 0.36)):
        clock[0] = at
        live(SyncProgress(done=done, total=5, rate_per_s=1.0, eta_s=1.0))
    published = [json.loads(f[b"progress"])["done"] for _, f in client.xrange(SYNC_EVENTS)]
    assert seen == [0, 1, 2, 3, 4, 5] and published == [0, 3, 5]  # first, every 0.25 s, last
    assert [p.source for p in running(client)] == ["/a"]
    assert running(client, now=live.last.at_ms + STALE_AFTER_MS) == []  # a killed sync says nothing more
    live.finish("failed")
    assert running(client) == []
    broken = ProgressPublisher(sync_client("redis://127.0.0.1:1"), source="/b", tenant="t")
    broken(SyncProgress(done=0, total=1, rate_per_s=0.0, eta_s=None))  # Redis down: the sync goes on
    broken.finish("completed")


@pytest.mark.browser
async def test_the_documents_card_shows_syncs_running(browser: Any, env: dict[str, str]) -> None:  # noqa: F811
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium (make browser)")
    expect = pytest.importorskip("playwright.async_api").expect
    client = sync_client(env["DOCENT_REDIS_URL"])
    with ServerProcess(env) as server:
        page = await browser.new_page(viewport={"width": 1280, "height": 1400})
        await page.goto(f"{server.http_url}/admin")
        await page.fill(".admin-key-input", TEST_ADMIN_KEY)
        await page.click(".admin-key-save")
        await page.wait_for_selector(".admin-console:not([hidden])", timeout=WAIT_MS)
        await expect(page.locator(".admin-ws")).to_have_attribute("data-state", "connected", timeout=WAIT_MS)
        live = ProgressPublisher(client, source="/srv/handbook", tenant="default")
        live(SyncProgress(done=40, total=100, rate_per_s=12.5, eta_s=4.8))
        item = page.locator(".admin-docs-card .admin-sync-item")
        await expect(item).to_have_count(1, timeout=WAIT_MS)
        await expect(item).to_contain_text("40 / 100 documents, 12.5/s, ETA 5 s", timeout=WAIT_MS)
        assert await item.get_attribute("data-status") == "running"
        assert await item.locator("progress").evaluate("p => [p.value, p.max]") == [40, 100]
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.locator(".admin-docs-card").screenshot(path=str(SCREENSHOTS / "admin-sync-progress.png"))
        live(SyncProgress(done=100, total=100, rate_per_s=20.0, eta_s=0.0))
        live.finish("completed")
        await expect(item.locator(".admin-sync-phase")).to_have_text("completed", timeout=WAIT_MS)
        await expect(item).to_contain_text("100 / 100 documents")
        await page.close()
