"""`docent chaos --topology cluster`, small: 3 conversations of 2 asks over 2 web and 3 worker processes on a
3 + 3 Redis Cluster, a worker and a web process SIGKILLed and one primary SIGKILLed 300 ms after its
replication link was cut, asks acknowledged only once the replica has them (WAIT 1): every acknowledged
ask is answered, nothing is done twice; and the same with the kill aimed at an agent's model call in flight
(no repeated model call). The full runs and their figures are the CLI's (README "Crash safety on the
cluster").
"""

from __future__ import annotations

from pathlib import Path

import pytest

from server.chaos import Plan
from server.chaos.run import run_in


@pytest.mark.timeout(600)  # a hung run, not a slow one: ~10-30 s here, and CI's load is unknown
def test_with_wait_no_acknowledged_ask_is_lost_when_a_lagging_primary_dies(tmp_path: Path) -> None:
    plan = Plan(runs=3, turns=2, seed=1, wait_replicas=1, replica_lag_ms=300)
    report = run_in(tmp_path, plan)
    detail = report["detail"]
    assert detail["primary_kills"] and not detail["fault_errors"], detail
    assert report["lost_acknowledged_asks"] == 0, detail
    assert report["completed"] == plan.runs * plan.turns, detail
    for key in ("duplicate_effects", "repeated_llm_calls", "lost_turns", "invalid_logs"):
        assert report[key] == 0, (key, detail)


@pytest.mark.timeout(600)  # a hung run, not a slow one: ~20-30 s here, and CI's load is unknown
def test_with_wait_a_primary_killed_under_a_model_call_costs_no_repeated_model_call(tmp_path: Path) -> None:
    """The kill aimed at an agent's model call in flight (`--kill-at model`): the link is cut as the request
    arrives, so its response is the old primary's alone; with WAIT the next effect waits for the replica and
    the replay asks only for the response that was lost, a request the log holds."""
    plan = Plan(runs=3, turns=2, seed=2, wait_replicas=1, replica_lag_ms=600, kill_at="model")
    report = run_in(tmp_path, plan)
    detail = report["detail"]
    assert not detail["fault_errors"], detail
    assert detail["primary_kills"] and detail["primary_kills"][0]["aimed_at"].startswith("task@"), detail
    assert report["repeated_llm_calls"] == 0, detail
    assert report["lost_acknowledged_asks"] == 0, detail
    assert report["completed"] == plan.runs * plan.turns, detail
    for key in ("duplicate_effects", "lost_turns", "invalid_logs"):
        assert report[key] == 0, (key, detail)
