"""Issue 14, usage counted exactly once across crashes: a worker SIGKILLed right after it appended a model's
response (`LLMCompleted`) and before it counted the response's tokens leaves the entry uncounted; the next
activation counts it from the log's tail, and no activation after that counts it again (one Lua script
checks the conversation's usage cursor and moves the counters, keyed by the log entry id)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.test_conversation import ALICE, TENANT, World  # isort: skip (stub broker first)
from actors.spend import Spend
from index.types import Principal
from store.events import AnswerCompleted, LLMCompleted
from store.usage import Usage, UsageLedger, day_of
from tests.test_conversation import llm as llm
from tests.test_conversation import sinks as sinks
from tests.test_conversation import world as world

LEASE_MS = 600
CHILD = """
import os, signal, sys
from pathlib import Path
from tests.test_conversation import make_settings  # the stub broker first
from actors import runtime
from actors.conversation import activate
from actors.runtime import Runtime

tmp, redis_url, llm_url, smtp_port, conv = sys.argv[1:6]
settings = make_settings(Path(tmp), redis_url, llm_url, int(smtp_port), lease_ms=sys.argv[6])

def kill_at(point):
    if point == "usage_record":  # appended, not yet counted
        os.kill(os.getpid(), signal.SIGKILL)

rt = Runtime.from_settings(settings, crash=kill_at)
runtime.configure(rt)
activate(conv, rt)
print("not killed")
"""


def _totals(world: World) -> tuple[Usage, Usage]:
    return UsageLedger(world.log.client).totals(TENANT, str(ALICE["user"]), day_of(int(time.time() * 1000)))


def test_a_worker_killed_between_the_append_and_the_count_loses_no_usage(
    world: World, tmp_path: Path
) -> None:
    conv = f"once-{time.time_ns()}"
    before_tenant, before_user = _totals(world)
    world.ask(conv, "How long is parental leave?", mode="qa")
    settings = world.settings
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), settings.redis_url, world.llm.url,
         str(settings.smtp_port), conv, str(LEASE_MS)],
        cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    events = world.events(conv)
    completed = [e for e in events if isinstance(e, LLMCompleted)]
    assert len(completed) == 1 and not any(isinstance(e, AnswerCompleted) for e in events)
    tokens = completed[0].tokens_in + completed[0].tokens_out
    assert tokens > 0
    killed_tenant, _ = _totals(world)
    assert killed_tenant.tokens == before_tenant.tokens  # appended, not counted
    assert killed_tenant.turns == before_tenant.turns  # usage is counted as the activation closes: none yet

    time.sleep(LEASE_MS / 1000 + 0.2)  # the killed worker's lease runs out
    assert world.run(conv) == "done"  # counts the response from the tail, then answers
    after_tenant, after_user = _totals(world)
    assert after_tenant.tokens == before_tenant.tokens + tokens
    assert after_user.tokens == before_user.tokens + tokens
    assert (
        after_tenant.cost_usd - before_tenant.cost_usd == completed[0].cost_usd
        or abs(after_tenant.cost_usd - before_tenant.cost_usd - completed[0].cost_usd) < 1e-9
    )
    assert after_tenant.turns == before_tenant.turns + 1 and after_tenant.answers == before_tenant.answers + 1

    assert world.run(conv) == "done"  # another activation: nothing counted twice
    principal = Principal(tenant=TENANT, user="alice", groups=())
    assert Spend(settings).recover(principal, conv, world.log.read(conv)) == 0  # the whole log: all counted
    again_tenant, again_user = _totals(world)
    assert (again_tenant.tokens, again_tenant.turns, again_tenant.answers) == (
        after_tenant.tokens, after_tenant.turns, after_tenant.answers,
    )  # fmt: skip
    assert again_user.tokens == after_user.tokens
