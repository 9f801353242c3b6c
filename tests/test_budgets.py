"""Issue 14, Cost and budgets: usage per tenant, user and day in Redis; daily budgets that refuse an ask
(`budget_exceeded`, before anything is posted) and stop a run before its next model call; `GET /admin/usage`.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.test_conversation import TENANT, build_index, make_settings  # isort: skip (stub broker first)
from actors import runtime
from actors.conversation import activate
from actors.runtime import Runtime
from actors.spend import Spend, counted
from actors.testing import ScriptedLLMThread
from index.types import Principal
from store.budgets import Budgets, BudgetsConfig, load_budgets
from store.clock import now_ms
from store.config_file import decode_config
from store.events import (
    AnswerCompleted,
    ApprovalDecided,
    ApprovalExpired,
    CacheHit,
    Citation,
    LimitHit,
    LLMCompleted,
    LLMRequested,
    UserMessage,
)
from store.exceptions import ConfigError, InputError
from store.holds import HOLD_TTL_MS, Held, Holds
from store.usage import DAY_MS, Spending, Usage, UsageLedger, day_of, days_between, ms_until_next_month
from tests.server_proc import TEST_ADMIN_KEY, ServerProcess, server_env
from tests.test_server_ws import ask, inbox, open_chat, recv, token

DAY = "2026-03-04"
BUDGETS_TOML = b"""
[default.user]
tokens_per_day = 1
[tenants.big.tenant]
cost_usd_per_day = 10.0
cost_usd_per_month = 100.0
[tenants.big.user]
tokens_per_day = 0
"""


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_each_quality_signal_is_counted_from_its_event() -> None:
    cited = AnswerCompleted(text="a [1] b [7]", citations=(Citation(n=1, doc_id="d", chunk_id="d#0"),),
                            dropped_citations=(7,), unsupported=(1,))  # fmt: skip
    assert counted(cited) == {"answers": 1, "uncited_answers": 0, "unsupported_sentences": 1,
                              "dropped_citations": 1}  # fmt: skip
    assert counted(ApprovalDecided(approval_id="a", decision="approved", reviewer="r")) == {
        "approvals_approved": 1
    }
    denied = ApprovalDecided(approval_id="a", decision="denied", reviewer="r")
    assert counted(denied) == {"approvals_denied": 1}
    assert counted(ApprovalExpired(approval_id="a")) == {"approvals_expired": 1}
    assert counted(LimitHit(limit="steps", value=9, cap=8)) == {"runaway_turns": 1}
    assert counted(LimitHit(limit="budget", value=9, cap=8)) == {}  # a budget stop is not a runaway
    hit = CacheHit(entry_id="e", similarity=0.9, cached_question="q", index_version="v", chunk_ids=(),
                   text="t", sources=(), unsupported=(), created_ms=1, latency_ms=1.0)  # fmt: skip
    assert counted(hit) == {"cache_hits": 1}


# -- the ledger ---------------------------------------------------------------------------------------------


def test_usage_is_counted_per_tenant_user_and_day_atomically(r: redis.Redis) -> None:
    ledger, tenant = UsageLedger(r), _unique("acme")

    def spend(user: str) -> None:
        for _ in range(50):
            ledger.record(tenant, user, DAY, tokens_in=10, tokens_out=2, cost_usd=0.001, turns=1)

    threads = [threading.Thread(target=spend, args=(user,)) for user in ("ann", "bob", "ann")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everyone, ann = ledger.totals(tenant, "ann", DAY)
    assert everyone == Usage(tokens_in=1500, tokens_out=300, cost_usd=pytest.approx(0.15), turns=150)
    assert ann.turns == 100 and ann.tokens == 1200
    assert ledger.totals(tenant, "ann", "2026-03-05") == (Usage(), Usage())  # another day
    ledger.record(tenant, "ann", "2026-03-20", tokens_in=7, cost_usd=0.5)
    march = ledger.spending(tenant, "ann", int(dt.datetime(2026, 3, 20, tzinfo=dt.UTC).timestamp() * 1000))
    assert (march.user_day.tokens, march.user_month.tokens, march.tenant_month.tokens) == (7, 1207, 1807)
    assert march.tenant_month.cost_usd == pytest.approx(0.65)
    assert 0 < r.ttl(f"usage:{{{tenant}}}:{DAY}") <= 400 * 86_400  # every key expires
    report = ledger.report([DAY], tenant)
    assert [(row.user, row.turns) for row in report.rows] == [("", 150), ("ann", 100), ("bob", 50)]
    assert not report.truncated
    assert tenant in {row.tenant for row in ledger.report([DAY]).rows}  # listed for the day
    small = ledger.report([DAY], tenant, max_rows=2)
    assert len(small.rows) == 2 and small.truncated
    assert [row.user for row in ledger.report([DAY], tenant, "bob").rows] == ["", "bob"]


def test_report_days_are_checked() -> None:
    assert days_between("2026-02-27", "2026-03-01") == ["2026-02-27", "2026-02-28", "2026-03-01"]
    for first, last in (("2026-03-02", "2026-03-01"), ("2026-01-01", "2026-03-01"), ("march", "2026-03-01")):
        with pytest.raises(InputError):
            days_between(first, last)
    assert day_of(DAY_MS * 3 - 1) == "1970-01-03"


# -- the budgets --------------------------------------------------------------------------------------------


def _spent(tenant: Usage | None = None, user: Usage | None = None, month: Usage | None = None) -> Spending:
    """A day's spending (the month holds the day, or `month` for the tenant's month)."""
    tenant, user = tenant or Usage(), user or Usage()
    return Spending(tenant_day=tenant, user_day=user, tenant_month=month or tenant, user_month=user)


def test_budgets_per_tenant_override_the_default_field_by_field() -> None:
    budgets = Budgets(decode_config(BUDGETS_TOML, ".toml", BudgetsConfig, "budgets"))
    now = DAY_MS * 10 + 3_600_000  # 01:00 UTC
    spent = Usage(tokens_in=5, tokens_out=1)
    over = budgets.overspent("small", _spent(user=spent), now)
    assert over is not None
    assert (over.scope, over.limit, over.used, over.cap) == ("user", "tokens_per_day", 6, 1)
    assert over.retry_after_ms == DAY_MS - 3_600_000  # renews at midnight UTC
    error = over.error()
    assert error.code == "budget_exceeded" and error.to_wire()["retry_after_ms"] == over.retry_after_ms
    assert budgets.overspent("big", _spent(Usage(cost_usd=9.99), spent), now) is None  # no user token cap
    over = budgets.overspent("big", _spent(Usage(cost_usd=10.0)), now)
    assert over is not None and (over.scope, over.limit) == ("tenant", "cost_usd_per_day")
    # the month: big's tenant may spend 100 a month; today is cheap, the month is not
    over = budgets.overspent("big", _spent(Usage(cost_usd=1.0), month=Usage(cost_usd=100.0)), now)
    assert over is not None and (over.scope, over.limit) == ("tenant", "cost_usd_per_month")
    assert over.retry_after_ms == DAY_MS * 21 - 3_600_000  # 1970-01-11 01:00 -> 1970-02-01 00:00
    assert "first of next month" in over.error().message
    december = int(dt.datetime(2026, 12, 31, 23, 0, tzinfo=dt.UTC).timestamp() * 1000)
    assert ms_until_next_month(december) == 3_600_000
    with pytest.raises(ConfigError):
        decode_config(b"[default.user]\ntokens_per_day = -1\n", ".toml", BudgetsConfig, "budgets")
    with pytest.raises(ConfigError):
        decode_config(b"[default.users]\n", ".toml", BudgetsConfig, "budgets")


# -- a run stops before its next model call -----------------------------------------------------------------


@pytest.fixture
def budgets_file(tmp_path: Path) -> Path:
    path = tmp_path / "budgets.toml"
    path.write_bytes(BUDGETS_TOML)
    return path


@pytest.fixture
def rt(tmp_path: Path, redis_url: str, budgets_file: Path) -> Iterator[tuple[Runtime, ScriptedLLMThread]]:
    with ScriptedLLMThread() as llm:
        settings = make_settings(tmp_path, redis_url, llm.url, 1, budgets_path=str(budgets_file))
        build_index(settings)
        worker = Runtime.from_settings(settings)
        previous = runtime.configure(worker)
        yield worker, llm
        runtime.configure(previous)
        worker.close()


def test_a_turn_over_the_users_budget_stops_before_the_model_is_called(
    rt: tuple[Runtime, ScriptedLLMThread], r: redis.Redis
) -> None:
    worker, llm = rt
    user, conv = _unique("bob"), _unique("conv")
    question = {"tenant": TENANT, "user": user, "mode": "qa"}
    worker.log.post_inbox(conv, UserMessage(text="How long is parental leave?", **question))  # type: ignore[arg-type]
    assert activate(conv, worker) == "done"  # nothing spent yet: answered
    answered = [e for _, e in worker.log.read(conv)]
    completed = next(e for e in answered if isinstance(e, LLMCompleted))
    assert isinstance(answered[-1], AnswerCompleted)
    calls = llm.stats()["total"]
    worker.log.post_inbox(conv, UserMessage(text="And sick leave?", **question))  # type: ignore[arg-type]
    assert activate(conv, worker) == "done"
    second = [e for _, e in worker.log.read(conv)][len(answered) :]
    assert not any(isinstance(e, LLMRequested) for e in second)  # the model was not called
    assert llm.stats()["total"] == calls
    hit = second[-1]
    assert isinstance(hit, LimitHit) and hit.limit == "budget" and hit.handed_off and hit.cap == 1
    everyone, mine = UsageLedger(r).totals(TENANT, user, day_of(completed.at_ms))
    assert (mine.tokens_in, mine.tokens_out, mine.turns) == (completed.tokens_in, completed.tokens_out, 2)
    assert mine.cost_usd == pytest.approx(completed.cost_usd) and completed.cost_usd > 0
    assert everyone.turns >= 2


# -- the web process: refusal before posting, and GET /admin/usage ------------------------------------------


@pytest.fixture
def web(redis_url: str, tmp_path: Path, budgets_file: Path) -> Iterator[ServerProcess]:
    with ServerProcess(server_env(redis_url, tmp_path / "web", budgets_path=str(budgets_file))) as process:
        yield process


def _get(web: ServerProcess, path: str, key: str | None = TEST_ADMIN_KEY) -> tuple[int, Any]:
    request = urllib.request.Request(f"{web.http_url}{path}")
    if key:
        request.add_header("X-Admin-Key", key)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def test_an_ask_over_budget_is_refused_and_nothing_is_posted(
    web: ServerProcess, r: redis.Redis
) -> None:
    user = _unique("carol")
    ws, ready = await open_chat(web, token(web, user, tenant="acme"))
    conv = ready["conversation_id"]
    await ws.send(ask("first", "a1"))
    assert (await recv(ws))["type"] == "accepted"  # nothing spent yet
    UsageLedger(r).record("acme", user, day_of(now_ms()), tokens_in=3, turns=1)  # the worker's record
    await ws.send(ask("second", "a2"))
    error = await recv(ws)
    assert error["type"] == "error" and error["code"] == "budget_exceeded", error
    assert error["client_message_id"] == "a2" and 0 < error["retry_after_ms"] <= DAY_MS
    assert [m.text for m in inbox(r, conv)] == ["first"]  # the refused ask wrote nothing
    await ws.close()
    # another user of the tenant still may ask
    ws, _ = await open_chat(web, token(web, _unique("dave"), tenant="acme"))
    await ws.send(ask("hello", "d1"))
    assert (await recv(ws))["type"] == "accepted"
    await ws.close()

    status, body = _get(web, f"/admin/usage?tenant=acme&user={user}")
    assert status == 200
    assert body["days"] == [day_of(now_ms())]
    (mine,) = [row for row in body["rows"] if row["user"] == user]
    spend = {
        k: mine[k]
        for k in ("day", "tenant", "user", "tokens_in", "tokens_out", "tokens", "cost_usd", "turns")
    }
    assert spend == {"day": body["days"][0], "tenant": "acme", "user": user, "tokens_in": 3, "tokens_out": 0,
                     "tokens": 3, "cost_usd": 0.0, "turns": 1}  # fmt: skip
    assert mine["answers"] == 0  # quality signals are the tenant's only
    status, everyone = _get(web, "/admin/usage")  # the operator: every tenant
    assert status == 200 and any(row["tenant"] == "acme" and row["user"] == "" for row in everyone["rows"])
    assert _get(web, "/admin/usage", key=None)[0] == 401
    assert _get(web, "/admin/usage?from=2026-01-01&to=2026-03-01")[1]["code"] == "bad_input"


def test_no_budgets_file_means_no_budget(tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(tmp_path, redis_url, "http://127.0.0.1:1", 1)
    assert load_budgets(settings) is None


# -- concurrent asks: budget holds bound the overshoot -------------------------------------------------------

HOLD_TOKENS = 1_000


def test_concurrent_calls_overshoot_a_budget_by_at_most_one_call(tmp_path: Path, redis_url: str) -> None:
    """Eight calls of one user at once against a 1,500-token day: each places its hold, then checks the
    spending plus the holds placed before it (real Redis, threads). Exactly the first two in line pass
    (0 and 1,000 tokens before them), so the day ends at 2,000: one call past the budget, never eight."""
    tenant, user = _unique("rush"), "carol"
    path = tmp_path / "rush.toml"
    path.write_text(f"[tenants.{tenant}.user]\ntokens_per_day = 1500\n")
    settings = make_settings(tmp_path, redis_url, "http://127.0.0.1:1", 1, budgets_path=str(path))
    principal = Principal(tenant=tenant, user=user, groups=())
    ledger = UsageLedger.from_url(redis_url)
    start = threading.Barrier(8)
    admitted: list[str] = []

    def call(n: int) -> None:
        spend = Spend(settings)  # one per activation, as the actor has
        start.wait()
        hold = f"call-{n}"
        if spend.overspent(principal, now_ms(), hold_id=hold, tokens=HOLD_TOKENS, cost_usd=0.0) is None:
            admitted.append(hold)
            time.sleep(0.05)  # the model call: the others check while this one is in flight
            ledger.record(tenant, user, day_of(now_ms()), tokens_in=HOLD_TOKENS)
            spend.settle(hold)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    _, mine = ledger.totals(tenant, user, day_of(now_ms()))
    assert len(admitted) == 2 and mine.tokens == 2 * HOLD_TOKENS
    holds = Holds.from_url(redis_url)
    assert holds.held(tenant, user, now_ms()) == Held()  # every hold settled
    assert Spend(settings).overspent(principal, now_ms(), hold_id="late", tokens=1) is not None  # spent


def test_a_killed_workers_hold_expires(redis_url: str) -> None:
    holds, tenant = Holds.from_url(redis_url), _unique("gone")
    long_ago = now_ms() - HOLD_TTL_MS - 1
    holds.place(tenant, "dan", "crashed", 5_000, 1.0, long_ago)  # its worker never settled it
    mine = holds.place(tenant, "dan", "next", 10, 0.0, now_ms())
    assert holds.held(tenant, "dan", now_ms(), before=mine) == Held()
    first = holds.place(tenant, "erin", "a", 7, 0.5, now_ms())
    assert holds.held(tenant, "erin", now_ms(), before=first) == Held(tenant_tokens=10)  # dan's, before
    later = holds.place(tenant, "dan", "b", 1, 0.0, now_ms())
    seen = holds.held(tenant, "dan", now_ms(), before=later)
    assert (seen.tenant_tokens, seen.user_tokens, seen.tenant_cost_usd) == (17, 10, 0.5)
