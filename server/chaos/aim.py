"""Where the cluster chaos run aims its primary kill with `--kill-at model`: at an agent task's model call in
flight on that primary.

`ModelCallWatch` polls the scripted model's request counts (`ScriptedLLMThread.stats`) and names the first
conversation whose agent task has just requested a step that a tool call follows (its `LLMRequested` is on
the primary, and on its replica by then). The runner cuts that conversation's primary's replication link at
once and kills it `--replica-lag-ms` later: the model's response (`LLMCompleted`) is acknowledged by the
old primary alone, and whatever the worker does next until the kill is too. Without WAIT the worker goes on
to the tool call and the next model call on writes the failover drops, so the replay asks the model again
for a step whose request the log no longer holds (a repeated LLM call); with WAIT the tool call's WAIT
fails first and nothing runs on the lost writes.

The task's model steps are slowed (`TASK_DELTA_DELAY_MS` per streamed piece, a few hundred ms a step), so
the cut lands inside the call rather than after it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from actors.chaos.run import is_workflow, script_key, task_script
from actors.testing import ScriptedLLMThread
from server.chaos.clients import ChaosClient

TASK_DELTA_DELAY_MS = 40  # per streamed piece of the task's model steps: ~200-400 ms a step
MODEL_CALL_WAIT_S = 90.0  # at most this long for an agent's model call to aim at
MODEL_POLL_S = 0.01


def task_steps_with_tools(sink_url: str) -> int:
    """How many of the task's model steps are followed by a tool call (the ones worth aiming at)."""
    return sum(1 for step in task_script(sink_url)["steps"] if step.get("tool_calls"))


def slowed_task_script(sink_url: str) -> dict[str, Any]:
    """`actors.chaos.run.task_script` with model steps that take a few hundred ms each."""
    return {**task_script(sink_url), "delay_ms": TASK_DELTA_DELAY_MS}


class ModelCallWatch:
    """The first agent model call requested after `start()`, of a step a tool call follows."""

    def __init__(self, llm: ScriptedLLMThread, clients: Sequence[ChaosClient], tool_steps: int) -> None:
        self.llm = llm
        self.clients = clients
        self.tool_steps = tool_steps
        self._seen: dict[tuple[str, str], int] = {}

    def start(self) -> None:
        self._seen = self._counts()

    def wait(self, stop: threading.Event, timeout_s: float = MODEL_CALL_WAIT_S) -> tuple[str, str] | None:
        """(conversation id, "script key step N") of the call, or None when none came in time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not stop.is_set():
            for (key, step), count in self._counts().items():
                if count > self._seen.get((key, step), 0) and int(step) < self.tool_steps:
                    conversation = self._conversation_of(key)
                    if conversation:
                        return conversation, f"{key} step {step}"
            stop.wait(MODEL_POLL_S)
        return None

    def _counts(self) -> dict[tuple[str, str], int]:
        requests: dict[str, dict[str, int]] = self.llm.stats()["requests"]
        return {(key, step): n for key, steps in requests.items() for step, n in steps.items()}

    def _conversation_of(self, key: str) -> str:
        for run, client in enumerate(self.clients):
            if not is_workflow(run) and script_key(run) == key:
                return client.conversation_id
        return ""


def steps_requested_again(requests: dict[str, dict[str, int]], runs: int) -> int:
    """Model calls made again for a step of an agent task (beyond one per step), whether or not the log
    accounts for them: a response lost with the primary is asked for again on replay."""
    keys = {script_key(run) for run in range(runs) if not is_workflow(run)}
    return sum(max(0, n - 1) for key in keys for n in requests.get(key, {}).values())
