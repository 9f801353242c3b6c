"""`docent chaos` for real: worker processes SIGKILLed at random moments (and crashing right after effects),
then the logs and the sinks are checked for duplicated effects, repeated model calls and lost turns."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from actors.chaos import main
from actors.runtime import Runtime, no_crash
from actors.testing import RandomExit
from actors.testing.crash import CRASH_EXIT_CODE
from store.exceptions import ConfigError
from store.settings import Settings


@pytest.mark.timeout(600)  # a hung run, not a slow one: ~10-30 s here, and CI's load is unknown
def test_chaos_runs_stay_clean_under_sigkill(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(runs=3, as_json=True, seed=3)
    lines = capsys.readouterr().out.strip().splitlines()
    detail, summary = json.loads(lines[-2]), json.loads(lines[-1])
    assert summary == {
        "runs": 3, "completed": 3, "duplicate_effects": 0, "repeated_llm_calls": 0, "lost_turns": 0,
        "invalid_logs": 0,
    }  # fmt: skip
    assert detail["kills"] + detail["crash_exits"] >= 1  # something was actually killed
    assert detail["workflow_runs"] == 1  # run 1 is the compare_table workflow, runs 0 and 2 agent tasks
    assert detail["http_effects"] == 4 and detail["emails"] == 3
    assert code == 0


def test_the_crash_hook_exits_hard_only_where_it_is_installed() -> None:
    # No production setting reaches it: the old setting is now an unknown DOCENT_ variable.
    with pytest.raises(ConfigError):
        Settings.from_env({"DOCENT_CHAOS_CRASH_RATE": "0.5"})
    assert Runtime.crash is no_crash and RandomExit(0.0)("tool_effect") is None  # the default does nothing
    with pytest.raises(ValueError):
        RandomExit(1.5)
    code = "from actors.testing import RandomExit; RandomExit(1.0)('tool_effect'); print('survived')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.returncode == CRASH_EXIT_CODE and b"survived" not in done.stdout
