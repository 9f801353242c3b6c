"""Issue 14, the admin console's charts beyond tokens and cost: quality signals per day and Q&A latency
percentiles per hour (`GET /admin/latency`, `store.latency`) as inline SVG lines, and reindex progress per
running job live from /ws/admin (bars and a line); headless Chromium, with screenshots of what is drawn.
The hourly latency histograms themselves against a real Redis."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from index.reindex.jobs import ReindexJob, save_job
from store.latency import BUCKETS_MS, LatencyLedger, bucket_of, hours_of_days, quantile
from store.usage import UsageLedger
from tests.server_proc import ServerProcess, server_env
from tests.test_browser import CHROMIUM, SCREENSHOTS, WAIT_MS
from tests.test_browser import browser as browser  # the headless Chromium fixture
from tests.test_usage_console import show_usage, signed_in_admin

FIRST, LAST = dt.date(2026, 3, 9), dt.date(2026, 3, 10)


def test_percentiles_interpolate_in_their_bucket_as_histogram_quantile() -> None:
    counts = [0] * (len(BUCKETS_MS) + 1)
    assert quantile(counts, 0.5) is None
    counts[bucket_of(80)] = 10  # ten answers in (50, 100] ms
    assert quantile(counts, 0.5) == 75.0 and quantile(counts, 0.95) == 97.5
    counts[-1] = 90  # slower than the last bound: the last finite bound
    assert quantile(counts, 0.95) == float(BUCKETS_MS[-1])
    assert bucket_of(5) == 0 and bucket_of(10**9) == len(BUCKETS_MS)


def test_latencies_are_counted_per_hour_for_the_tenant_and_everyone(r: redis.Redis) -> None:
    ledger = LatencyLedger(r)
    tenant, other = f"t-{uuid.uuid4().hex[:6]}", f"o-{uuid.uuid4().hex[:6]}"
    hours = hours_of_days([FIRST.isoformat()])
    for n in range(20):
        ledger.record(tenant, "qa", hours[3], first_token=40 + n, answer=900 + n)
    ledger.record(other, "qa", hours[3], first_token=None, answer=20_000)
    ledger.record(tenant, "agent", hours[3], first_token=1, answer=1)  # another route: its own series
    mine = ledger.series(hours, tenant, "qa").points
    assert [p.hour for p in mine][:4] == [f"{FIRST.isoformat()}T0{h}" for h in range(4)]
    assert mine[3].answers == 20 and mine[2].answers == 0 and mine[2].answer_p50_ms is None
    assert mine[3].first_token_p50_ms is not None and 25 < mine[3].first_token_p50_ms <= 50
    assert mine[3].answer_p95_ms is not None and 500 < mine[3].answer_p95_ms <= 1000
    everyone = ledger.series(hours).points[3]
    assert everyone.answers >= 21
    assert everyone.answer_p95_ms is not None and everyone.answer_p95_ms > mine[3].answer_p95_ms


def _seed(r: redis.Redis, tenant: str) -> list[str]:
    usage = UsageLedger(r)
    days = [FIRST.isoformat(), LAST.isoformat()]
    usage.record(tenant, "ann", days[0], turns=4, answers=4, uncited_answers=1, retrievals=4,
                 no_passage_retrievals=1, feedback_up=1, feedback_down=1)  # fmt: skip
    usage.record(tenant, "ann", days[1], turns=2, answers=2, retrievals=2)
    latency = LatencyLedger(r)
    hours = hours_of_days(days)
    for hour, ms in ((hours[9], 300), (hours[10], 600), (hours[11], 1200), (hours[30], 450)):
        for n in range(5):
            latency.record(tenant, "qa", hour, first_token=ms / 4 + n, answer=ms + 10 * n)
    return days


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (make browser)")
async def test_the_console_draws_quality_latency_and_reindex_progress_charts(
    browser: Any, redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    tenant = f"acme-{uuid.uuid4().hex[:6]}"
    _seed(r, tenant)
    with ServerProcess(server_env(redis_url, tmp_path)) as web:
        page, errors = await signed_in_admin(browser, web.http_url)
        await show_usage(page, FIRST, LAST, tenant)
        await page.wait_for_selector(".admin-latency-answer svg path.admin-line", timeout=WAIT_MS)
        await page.wait_for_selector(".admin-quality-chart svg path.admin-line", timeout=WAIT_MS)

        lines = "ps => ps.map(p => [p.dataset.series, +p.dataset.points])"
        quality = await page.eval_on_selector_all(".admin-quality-chart path.admin-line", lines)
        assert quality == [["cited", 2], ["no passages", 2], ["down-votes", 1]]  # no ratings on day two
        for figure in (".admin-latency-first", ".admin-latency-answer"):
            assert await page.eval_on_selector_all(f"{figure} path.admin-line", lines) == [
                ["p50", 4],
                ["p95", 4],
            ]
        dots = await page.eval_on_selector_all(".admin-latency-first circle.admin-dot", "ds => ds.length")
        assert dots == 8  # every point a dot: a lone hour shows
        answer_p50 = await page.get_attribute(".admin-latency-answer path[data-series='p50']", "d")
        assert answer_p50 is not None and answer_p50.count("M") == 2  # a gap between the two days' hours
        box = await page.locator(".admin-latency-answer svg").bounding_box()
        assert box and box["width"] > 300 and box["height"] > 100
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.locator(".admin-usage-card").screenshot(path=str(SCREENSHOTS / "admin-charts-usage.png"))

        await page.wait_for_selector('.admin-ws[data-state="connected"]', timeout=WAIT_MS)
        job = ReindexJob(
            id=f"rx-{uuid.uuid4().hex[:8]}", model="hash", new_version="v-new", old_version="v-old",
            chunk_tokens=256, chunk_overlap=32, rechunk=False, status="building", docs_total=40,
        )  # fmt: skip
        for done in (5, 15, 30):
            job.docs_done = done
            save_job(r, job)  # published on reindex:events: a /ws/admin frame
            await page.wait_for_function(
                f"() => (document.querySelector('.admin-reindex-chart .admin-progress-fill') || {{}})"
                f".dataset?.share === '{done / 40:.3f}'", timeout=WAIT_MS,
            )  # fmt: skip
        fills = await page.eval_on_selector_all(
            ".admin-reindex-chart .admin-progress-fill", "fs => fs.length"
        )
        assert fills == 1
        points = await page.get_attribute(".admin-reindex-chart .admin-progress-line", "data-points")
        assert points is not None and int(points) >= 3
        await page.locator(".admin-reindex-chart").screenshot(
            path=str(SCREENSHOTS / "admin-charts-reindex.png")
        )
        job.status, job.docs_done = "done", 40
        save_job(r, job)
        await page.wait_for_selector(".admin-job[data-status='done']", timeout=WAIT_MS)
        assert errors == []
