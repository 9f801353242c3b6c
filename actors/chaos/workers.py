"""The chaos runner's worker processes: started each in its own session, SIGKILLed as a group, revived.

They run `actors.testing.chaos_worker`: the production conversation worker whose runtime carries a crash
hook that exits hard right after effects and model responses (rate: `CHAOS_CRASH_RATE`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

WORKER_MODULE = "actors.testing.chaos_worker"
WORKER_THREADS = 2
STOP_TIMEOUT_S = 5.0


class Workers:
    """Worker process groups, each started in its own session so one SIGKILL takes the whole group."""

    def __init__(self, env: dict[str, str], count: int, log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self.kills = 0
        self.exits = 0  # workers that died by themselves (the in-process crash points)

    def start(self, index: int) -> None:
        command = [sys.executable, "-m", "dramatiq", WORKER_MODULE, "--queues", "conversation",
                   "--processes", "1", "--threads", str(WORKER_THREADS)]  # fmt: skip
        with open(self.log_dir / f"worker-{index}.log", "ab") as out:
            self.procs[index] = subprocess.Popen(command, env=self.env, stdout=out, stderr=out,
                                                 start_new_session=True)  # fmt: skip

    def start_all(self) -> None:
        for i in range(len(self.procs)):
            self.start(i)

    def kill(self, index: int) -> None:
        proc = self.procs[index]
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group we started: main process and its worker
            proc.wait()
            self.kills += 1
        self._reap_group(proc)
        self.start(index)

    def revive(self) -> None:
        """Restart groups whose main process exited (a worker's crash point shuts its group down)."""
        for i, proc in enumerate(self.procs):
            if proc is not None and proc.poll() is not None:
                self.exits += 1
                self._reap_group(proc)
                self.start(i)

    def _reap_group(self, proc: subprocess.Popen[bytes] | None) -> None:
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of a group whose leader is gone

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in self.procs:
            if proc is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            self._reap_group(proc)
