"""The operator console's documents card in a real headless Chromium against the real web process, worker
and Redis (issue 12): list and filter a tenant's documents, change FALCON's readers and delete PUBLIC
from the page (checked through the API and search), and the folder-sync reports."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.folder_sync import READERS_FILE, sync_folder
from store.redis import EmbeddedRedis
from tests.docs_world import FALCON_ID, PUBLIC_ID, TENANT, World, running_world
from tests.server_proc import TEST_ADMIN_KEY
from tests.test_admin_page import browser  # noqa: F401 (the headless Chromium fixture)
from tests.test_browser import CHROMIUM, SCREENSHOTS

WAIT_MS = 45_000  # a headless Chromium page across the web process and Redis, on a loaded machine

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (make browser)"),
]


@pytest.fixture(scope="module")
def world(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from running_world(redis_server.url, tmp_path_factory.mktemp("admindocs"))


def synced_folder(world: World) -> Path:
    root = world.settings.data_path / "handbook"
    root.mkdir(exist_ok=True)
    (root / READERS_FILE).write_text("group:ops\n")
    (root / "rota.md").write_text("# On-call rota\n\nThe on-call engineer rotates every Monday at nine.\n")
    report = sync_folder(world.settings, root, tenant=TENANT)
    assert report.added == 1
    return root


async def test_documents_card_lists_filters_repermissions_and_deletes(browser: Any, world: World) -> None:  # noqa: F811
    expect = pytest.importorskip("playwright.async_api").expect
    synced_folder(world)
    page = await browser.new_page(viewport={"width": 1280, "height": 1400})
    await page.goto(f"{world.web.http_url}/admin")
    await page.fill(".admin-key-input", TEST_ADMIN_KEY)
    await page.click(".admin-key-save")
    await page.wait_for_selector(".admin-console:not([hidden])", timeout=WAIT_MS)

    card = page.locator(".admin-docs-card")
    await card.locator(".admin-docs-load").click()
    await page.wait_for_selector(f'.admin-docs tr[data-doc-id="{FALCON_ID}"]', timeout=WAIT_MS)
    listed = await card.locator(".admin-docs tr[data-doc-id]").evaluate_all(
        "rows => rows.map(r => r.getAttribute('data-doc-id'))"
    )
    assert FALCON_ID in listed and PUBLIC_ID in listed and len(listed) == 3
    await page.wait_for_selector('.admin-syncs tr[data-status="completed"]', timeout=WAIT_MS)
    sync_row = await card.locator('.admin-syncs tr[data-status="completed"]').first.inner_text()
    assert "handbook" in sync_row

    # A metadata filter: the synced file's path.
    await card.locator(".admin-docs-path").fill("rota")
    await card.locator(".admin-docs-load").click()
    rows = card.locator(".admin-docs tr[data-doc-id]")
    await expect(rows).to_have_count(1, timeout=WAIT_MS)
    assert (await rows.first.get_attribute("data-doc-id") or "").endswith("handbook/rota.md")
    await card.locator(".admin-docs-path").fill("")
    await card.locator(".admin-docs-load").click()
    falcon = card.locator(f'.admin-docs tr[data-doc-id="{FALCON_ID}"]')
    await falcon.wait_for(timeout=WAIT_MS)

    # Readers: legal -> finance, effective for the next query.
    await falcon.locator(".admin-docs-readers-input").fill("group:finance")
    await falcon.locator(".admin-docs-readers-save").click()
    await expect(card.locator(".admin-docs-msg")).to_contain_text("effective now", timeout=WAIT_MS)
    status, detail = world.http("GET", f"/api/documents/{FALCON_ID}?tenant={TENANT}", admin=True)
    assert status == 200 and detail["readers"] == ["group:finance"]
    lee = world.token("lee", ("legal",))
    status, found = world.http("POST", "/api/search", {"query": "quantum harbor bridge", "mode": "bm25"},
                               token=lee)  # fmt: skip
    assert status == 200 and FALCON_ID not in {h["doc_id"] for h in found["hits"]}

    shots = Path(os.environ.get("DOCENT_TEST_SCREENSHOTS") or SCREENSHOTS)
    shots.mkdir(parents=True, exist_ok=True)
    await card.screenshot(path=str(shots / "admin-documents.png"))

    # Delete: two clicks (armed button), then gone from the list, the API and search.
    public = card.locator(f'.admin-docs tr[data-doc-id="{PUBLIC_ID}"]')
    await public.locator(".admin-docs-delete").click()
    assert await public.locator(".admin-docs-delete").inner_text() == "Confirm delete"
    await public.locator(".admin-docs-delete").click()
    await public.wait_for(state="detached", timeout=WAIT_MS)
    assert world.http("GET", f"/api/documents/{PUBLIC_ID}?tenant={TENANT}", admin=True)[0] == 404
    status, found = world.http("POST", "/api/search", {"query": "lentil soup", "mode": "bm25"}, token=lee)
    assert status == 200 and PUBLIC_ID not in {h["doc_id"] for h in found["hits"]}
    await page.close()
