"""Usage of several log entries counted in one script call (`store.usage.record_entries_plan`): each entry
exactly once, summed per field, the cursor moved to the newest counted one, on one node and a cluster."""

from __future__ import annotations

import pytest
import redis

from store.usage import UsageLedger, cursor_key, tenants_key

pytestmark = pytest.mark.cluster

DAY = "2026-03-04"


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
