"""Usage of several log entries counted in one script call (`store.usage.record_entries_plan`): each entry
exactly once, summed per field, the cursor moved to the newest counted one, on one node and a cluster."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from store.exceptions import StaleEpoch, Unavailable
from store.latency import LatencyLedger
from store.latency import record_commands as latency_commands
from store.log import RENEW
from store.redis import async_client
from store.scripts import AsyncRunner, EvalWith, LuaScript, Plan, SyncRunner
from store.usage import RECORD_ONCE, UsageLedger, cursor_key, tenants_key, usage_key, users_key

pytestmark = pytest.mark.cluster

DAY = "2026-03-04"
HOUR = f"{DAY}T10"


def test_entries_are_counted_once_each_and_summed(r: redis.Redis) -> None:
    ledger = UsageLedger(r)
    first = [("1-0", {"turns": 1}), ("2-0", {"tokens_in": 10, "tokens_out": 2, "cost_usd": 0.1})]
    assert ledger.record_entries("t", "u", DAY, "c", first) == 2
    # A replay overlapping what was counted: only the newer entry counts; costs sum without rounding drift.
    again = [("2-0", {"tokens_in": 10, "tokens_out": 2, "cost_usd": 0.1}),
             ("3-0", {"tokens_in": 5, "cost_usd": 0.2, "answers": 1, "uncited_answers": 0})]  # fmt: skip
    assert ledger.record_entries("t", "u", DAY, "c", again) == 1
    assert ledger.record_entries("t", "u", DAY, "c", again) == 0
    tenant, user = ledger.totals("t", "u", DAY)
    assert (tenant.turns, tenant.tokens_in, tenant.tokens_out, tenant.answers) == (1, 15, 2, 1)
    assert abs(tenant.cost_usd - 0.3) < 1e-12 and user.tokens_in == 15 and user.answers == 0
    assert r.get(cursor_key("t", "c")) in (b"3-0", "3-0")
    assert ledger.cursor("t", "c") == "3-0"
    assert r.smembers(tenants_key(DAY)) in ({b"t"}, {"t"})


def test_an_entry_with_nothing_to_add_still_moves_the_cursor(r: redis.Redis) -> None:
    ledger = UsageLedger(r)
    assert ledger.record_entries("t", "u", DAY, "c", [("5-1", {"retrievals": 1, "no_passage_retrievals": 0})])
    assert ledger.record_entries("t", "u", DAY, "c", [("5-2", {})]) == 1
    assert ledger.cursor("t", "c") == "5-2"
    assert ledger.record_once("t", "u", DAY, "c", "5-1", turns=1) is False  # older than the cursor
    assert ledger.totals("t", "u", DAY)[0].retrievals == 1


def _latency_commands(tenant: str) -> Callable[[Any], None]:
    queue = latency_commands(tenant, "qa", HOUR, {"first_token": 12.0, "answer": 40.0})
    assert queue is not None
    return queue


def _latency_answers(r: redis.Redis, tenant: str | None) -> int:
    return LatencyLedger(r).series([HOUR], tenant).points[0].answers


def test_usage_and_latencies_go_in_one_round_trip_even_after_a_script_flush(r: redis.Redis) -> None:
    """`EvalWith`: the usage script, then the latency writes (other slots) on one pipeline; after a SCRIPT
    FLUSH (a restarted Redis) the script is loaded and called again alone, and the latencies count once."""
    ledger = UsageLedger(r)
    assert ledger.record_entries("t", "u", DAY, "c", [("1-0", {"turns": 1})], _latency_commands("t")) == 1
    r.script_flush()
    assert ledger.record_entries("t", "u", DAY, "c", [("2-0", {"answers": 1})], _latency_commands("t")) == 1
    assert ledger.record_entries("t", "u", DAY, "c", [("2-0", {"answers": 1})], _latency_commands("t")) == 0
    tenant, _ = ledger.totals("t", "u", DAY)
    assert (tenant.turns, tenant.answers) == (1, 1)
    assert _latency_answers(r, "t") == 3 and _latency_answers(r, None) == 3  # every call's, once


def test_a_script_error_in_one_round_trip_is_raised_typed(r: redis.Redis) -> None:
    """A failing script's error is raised (translated) as when it is called alone, once the writes ran."""
    runner = SyncRunner(r, unavailable=Unavailable)
    with pytest.raises(StaleEpoch):
        runner.run(_one_round_trip(RENEW))  # renewing a lease nobody holds
    assert _latency_answers(r, "t") == 1


async def test_the_async_runner_sends_the_same_round_trip(redis_url: str, r: redis.Redis) -> None:
    client = async_client(redis_url)
    try:
        r.script_flush()
        replies = await AsyncRunner(client, unavailable=Unavailable).run(_evalwith_plan())
        assert int(replies[0]) == 1 and _latency_answers(r, "t") == 1
    finally:
        await client.aclose()


def _evalwith_plan() -> Plan[list[Any]]:
    keys = [usage_key("t", DAY), users_key("t", DAY), usage_key("t", DAY[:7]), users_key("t", DAY[:7]),
            cursor_key("t", "c")]  # fmt: skip
    replies: list[Any] = yield EvalWith(RECORD_ONCE, keys, ["u", 60, 60, "1-0", 1, "turns", 1, "s"],
                                        _latency_commands("t"))  # fmt: skip
    return replies


def _one_round_trip(script: LuaScript) -> Plan[list[Any]]:
    replies: list[Any] = yield EvalWith(script, ["lease:{t}"], [7, 1000], _latency_commands("t"))
    return replies


def test_the_months_hold_what_the_budgets_check_and_no_turns(r: redis.Redis) -> None:
    ledger = UsageLedger(r)
    entries = [("1-0", {"turns": 1}), ("2-0", {"tokens_in": 7, "tokens_out": 3, "cost_usd": 0.5})]
    assert ledger.record_entries("t", "u", DAY, "c", entries) == 2
    ledger.record("t", "u", DAY, turns=1, tokens_in=1)  # the pipelined record, the same fields
    spent = ledger.spending("t", "u", 1_772_582_400_000)  # 2026-03-04T00:00Z
    assert (spent.tenant_day.turns, spent.user_day.turns, spent.user_day.tokens) == (2, 2, 11)
    assert (spent.tenant_month.tokens, spent.user_month.tokens, spent.user_month.cost_usd) == (11, 11, 0.5)
    assert spent.tenant_month.turns == spent.user_month.turns == 0  # never read: not written
    assert not r.hexists(usage_key("t", DAY[:7]), "turns")
