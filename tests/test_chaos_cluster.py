"""`docent chaos --topology cluster`, small: 3 conversations of 2 asks over 2 web and 3 worker processes on a
3 + 3 Redis Cluster, a worker and a web process SIGKILLed and one primary SIGKILLed 300 ms after its
replication link was cut, asks acknowledged only once the replica has them (WAIT 1): every acknowledged
ask is answered, nothing is done twice. The full runs and their figures are the CLI's (README "Crash
safety on the cluster").
"""

from __future__ import annotations

from pathlib import Path

import pytest

from server.chaos import Plan
from server.chaos.run import run_in


@pytest.mark.timeout(120)
def test_with_wait_no_acknowledged_ask_is_lost_when_a_lagging_primary_dies(tmp_path: Path) -> None:
    plan = Plan(runs=3, turns=2, seed=1, wait_replicas=1, replica_lag_ms=300)
    report = run_in(tmp_path, plan)
    detail = report["detail"]
    assert detail["primary_kills"] and not detail["fault_errors"], detail
    assert report["lost_acknowledged_asks"] == 0, detail
    assert report["completed"] == plan.runs * plan.turns, detail
    for key in ("duplicate_effects", "repeated_llm_calls", "lost_turns", "invalid_logs"):
        assert report[key] == 0, (key, detail)
