"""A process manager for `docent run`: children that crash are restarted with backoff, and said so.

Each child (the embedded Redis, web, worker, ingest) is a `Child`: something that starts a process and
stops it. `Supervisor.watch` polls them; a child that exited is restarted after a backoff that grows with
its recent crashes (0.5 s, 1 s, 2 s, 4 s, then 8 s), and every exit and restart is printed. Only a crash
loop stops the stack: `CRASH_LOOP_COUNT` exits of one child within `CRASH_LOOP_WINDOW_S` raise `CrashLoop`.
A child that fails to start at all (say, its port was taken) counts as a crash of that child.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from store.exceptions import DocentError

BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
CRASH_LOOP_COUNT = 5
CRASH_LOOP_WINDOW_S = 60.0
POLL_INTERVAL_S = 0.2
CHILD_STOP_TIMEOUT_S = 10.0


class CrashLoop(Exception):
    """A child crashed CRASH_LOOP_COUNT times within CRASH_LOOP_WINDOW_S: the stack stops."""


class Child(Protocol):
    name: str

    def start(self) -> int:
        """Start the process; its pid. May raise DocentError (counted as a crash)."""
        ...

    def exit_code(self) -> int | None:
        """None while it runs."""
        ...

    def stop(self) -> None: ...

    def reap(self) -> None:
        """After its main process exited: end what it leaves behind (forked workers)."""
        ...


class CommandChild:
    """A Procfile command in its own session (process group), with the stack's environment."""

    def __init__(self, name: str, command: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        # Own session: Ctrl-C reaches only the supervisor, which stops the children in order (Redis last).
        self.process = subprocess.Popen(self.command, env=self.env, start_new_session=True)
        return self.process.pid

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self) -> None:
        if self.process is not None:
            signal_group(self.process, signal.SIGTERM)

    def reap(self) -> None:
        if self.process is not None:
            signal_group(self.process, signal.SIGKILL)  # forked workers may outlive their leader


def signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def say(text: str) -> None:
    print(f"supervisor: {text}", file=sys.stderr, flush=True)


class _Watched:
    """One child's crash history and pending restart."""

    def __init__(self, child: Child) -> None:
        self.child = child
        self.crashes: deque[float] = deque()
        self.restart_at: float | None = None

    def crashed(self, now: float) -> float:
        """Record a crash; the backoff before the restart (CrashLoop when the loop limit is reached)."""
        self.crashes.append(now)
        while self.crashes and now - self.crashes[0] > CRASH_LOOP_WINDOW_S:
            self.crashes.popleft()
        if len(self.crashes) >= CRASH_LOOP_COUNT:
            raise CrashLoop(
                f"{self.child.name} crashed {len(self.crashes)} times in {CRASH_LOOP_WINDOW_S:.0f} s"
            )
        return BACKOFF_S[min(len(self.crashes), len(BACKOFF_S)) - 1]


class Supervisor:
    """Starts children in order, restarts crashed ones, stops them in reverse order (Redis last)."""

    def __init__(self) -> None:
        self.watched: list[_Watched] = []

    def start(self, child: Child) -> None:
        """Start a child now; a failure here is the caller's (the stack is not up yet)."""
        pid = child.start()
        say(f"started {child.name} (pid {pid})")
        self.watched.append(_Watched(child))

    def watch(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Keep every child running until `should_stop()`; CrashLoop when one keeps crashing."""
        while not should_stop():
            now = time.monotonic()
            for watched in self.watched:
                self._tend(watched, now)
            time.sleep(POLL_INTERVAL_S)

    def _tend(self, watched: _Watched, now: float) -> None:
        if watched.restart_at is not None:
            if now >= watched.restart_at:
                self._restart(watched, now)
            return
        code = watched.child.exit_code()
        if code is not None:
            watched.child.reap()
            delay = watched.crashed(now)
            say(f"{watched.child.name} exited with {code}; restarting in {delay:.1f} s")
            watched.restart_at = now + delay

    def _restart(self, watched: _Watched, now: float) -> None:
        watched.restart_at = None
        try:
            pid = watched.child.start()
        except DocentError as exc:
            delay = watched.crashed(now)
            say(f"{watched.child.name} could not start ({exc.code}: {exc.message}); retry in {delay:.1f} s")
            watched.restart_at = now + delay
            return
        say(f"restarted {watched.child.name} (pid {pid})")

    def stop_all(self) -> None:
        """SIGTERM each child (newest first), wait, then SIGKILL what outlived it."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not abandon the shutdown
        children = [w.child for w in reversed(self.watched)]
        commands = [c for c in children if isinstance(c, CommandChild)]
        for child in commands:
            child.stop()
        deadline = time.monotonic() + CHILD_STOP_TIMEOUT_S
        for child in commands:
            if child.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            child.reap()
        for other in children:
            if not isinstance(other, CommandChild):
                other.stop()
