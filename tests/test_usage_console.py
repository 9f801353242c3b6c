"""Issue 14, the admin console's usage card: tokens and cost per day drawn as inline SVG bar charts from
`GET /admin/usage`, with each tenant's day (spend and quality signals) in a table; headless Chromium, with
a screenshot of the drawn charts."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from store.usage import UsageLedger
from tests.server_proc import TEST_ADMIN_KEY, ServerProcess, server_env
from tests.test_browser import CHROMIUM, SCREENSHOTS, WAIT_MS
from tests.test_browser import browser as browser  # the headless Chromium fixture

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (make browser)"),
]

FIRST, LAST = dt.date(2026, 2, 3), dt.date(2026, 2, 5)


async def signed_in_admin(browser: Any, url: str) -> tuple[Any, list[str]]:
    """The admin console signed in with the admin key, and the page errors it raises."""
    page = await browser.new_page(viewport={"width": 1300, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{url}/admin")
    await page.fill(".admin-key-input", TEST_ADMIN_KEY)
    await page.click(".admin-key-save")
    await page.wait_for_selector(".admin-console", state="visible", timeout=WAIT_MS)
    return page, errors


async def show_usage(page: Any, first: dt.date, last: dt.date, tenant: str) -> None:
    """The usage card's form filled in and sent."""
    await page.fill(".admin-usage-from", first.isoformat())
    await page.fill(".admin-usage-to", last.isoformat())
    await page.fill(".admin-usage-tenant", tenant)
    await page.click(".admin-usage-load")


async def test_the_usage_card_charts_tokens_and_cost_per_day(
    browser: Any, redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    tenant = f"acme-{uuid.uuid4().hex[:6]}"
    ledger = UsageLedger(r)
    days = [(FIRST + dt.timedelta(days=n)).isoformat() for n in range(3)]
    ledger.record(tenant, "ann", days[0], tokens_in=900, tokens_out=100, cost_usd=0.5, turns=4, answers=4,
                  uncited_answers=1, feedback_down=1)  # fmt: skip
    ledger.record(tenant, "bob", days[2], tokens_in=300, tokens_out=200, cost_usd=0.25, turns=2, answers=2)
    with ServerProcess(server_env(redis_url, tmp_path)) as web:
        page, errors = await signed_in_admin(browser, web.http_url)
        await show_usage(page, FIRST, LAST, tenant)
        await page.wait_for_selector(".admin-usage-tokens svg .admin-bar", timeout=WAIT_MS)

        bars = await page.eval_on_selector_all(
            ".admin-usage-tokens .admin-bar", "bs => bs.map(b => [b.dataset.day, +b.getAttribute('height')])"
        )
        assert [day for day, _ in bars] == days
        heights = [h for _, h in bars]
        assert heights[0] > heights[2] > 0 and heights[1] == 0  # 1,000 tokens, none, 500 tokens
        cost = await page.eval_on_selector_all(
            ".admin-usage-cost .admin-bar", "bs => bs.map(b => +b.dataset.value)"
        )
        assert cost == [0.5, 0, 0.25]
        rows = await page.eval_on_selector_all(
            ".admin-usage tbody tr", "rs => rs.map(r => [...r.cells].map(c => c.textContent))"
        )
        assert rows == [
            [days[0], tenant, "4", "900", "100", "$0.5000", "4", "1", "0", "0", "0", "1"],
            [days[2], tenant, "2", "300", "200", "$0.2500", "2", "0", "0", "0", "0", "0"],
        ]
        box = await page.locator(".admin-usage-tokens svg").bounding_box()
        assert box and box["width"] > 300 and box["height"] > 100  # drawn at its size
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.locator(".admin-usage-card").screenshot(path=str(SCREENSHOTS / "admin-usage.png"))
        assert errors == []
