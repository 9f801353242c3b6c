"""`docent chaos` for real: worker processes SIGKILLed at random moments (and crashing right after effects),
then the logs and the sinks are checked for duplicated effects, repeated model calls and lost turns."""

from __future__ import annotations

import json

import pytest

from actors.chaos import main


@pytest.mark.timeout(120)
def test_chaos_runs_stay_clean_under_sigkill(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(runs=3, as_json=True, seed=3)
    lines = capsys.readouterr().out.strip().splitlines()
    detail, summary = json.loads(lines[-2]), json.loads(lines[-1])
    assert summary == {
        "runs": 3, "completed": 3, "duplicate_effects": 0, "repeated_llm_calls": 0, "lost_turns": 0,
        "invalid_logs": 0,
    }  # fmt: skip
    assert detail["kills"] + detail["crash_exits"] >= 1  # something was actually killed
    assert detail["http_effects"] == 6 and detail["emails"] == 3
    assert code == 0
