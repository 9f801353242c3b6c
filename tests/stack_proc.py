"""A real `docent run` in a subprocess: its own data dir, embedded Redis, web, workers; no demo, no model.

`Stack` starts it, follows the supervisor's lines (`started web (pid N)`, `restarted worker (pid N)`) so a
test can SIGKILL a child by its current pid, and reads the embedded Redis's URL from the data dir.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from actors.testing.ports import HeldPort
from tests.conftest import MODEL_CACHE
from tests.server_proc import REPO, LocalAddress

READY_TIMEOUT_S = 120.0  # a whole stack (Redis, web, workers) on a loaded 2-core machine
_CHILD_LINE = re.compile(r"supervisor: (?:re)?started (\w+) \(pid (\d+)\)")


class Stack(LocalAddress):
    def __init__(self, data_dir: Path, *args: str, **overrides: str) -> None:
        self.data_dir = data_dir
        self.args = args  # `docent run` options, e.g. --cluster
        self._held = HeldPort()  # until `stop`: the supervisor restarts its web process on this port
        self.port = self._held.port
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DOCENT_") and k != "REDIS_URL"}
        self.env.update(
            {
                "DOCENT_DATA_DIR": str(data_dir), "DOCENT_MODEL_DIR": str(MODEL_CACHE),
                "DOCENT_PORT": str(self.port),
                "DOCENT_EMBED_MODEL": "hash", "DOCENT_LLM_BACKEND": "none", "DOCENT_DEMO": "0",
                "DOCENT_GOLDEN_DEMO": "0",
            }
        )  # fmt: skip
        self.env.update({f"DOCENT_{k.upper()}": v for k, v in overrides.items()})
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.pids: dict[str, int] = {}

    def start(self, wait: bool = True) -> Stack:
        command = [sys.executable, "-m", "server.cli", "run", *self.args]
        self.process = subprocess.Popen(
            command, env=self.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        threading.Thread(target=self._follow, daemon=True).start()
        if wait:
            self.wait_ready()
        return self

    def _follow(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip())
            if match := _CHILD_LINE.search(line):
                self.pids[match.group(1)] = int(match.group(2))

    def output(self) -> str:
        return "\n".join(self.lines)

    def readyz(self) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"{self.http_url}/readyz", timeout=2) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"docent run exited with {self.process.returncode}:\n{self.output()}")
            try:
                if self.readyz()[0] == 200 and {"worker", "ingest"} <= set(self.pids):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"stack not ready in time:\n{self.output()}")

    def wait_for(self, text: str, timeout: float = 30.0, after: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines[after:]):
                return
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} in:\n{self.output()}")

    def kill_child(self, name: str) -> int:
        """SIGKILL the child's current main process; the supervisor's line count before it."""
        mark = len(self.lines)
        os.kill(self.pids[name], signal.SIGKILL)
        return mark

    def redis_url(self) -> str:
        directory = self.data_dir / "redis"
        password = (directory / "password").read_text().strip()
        return f"redis://docent:{password}@127.0.0.1:{(directory / 'port').read_text().strip()}/0"

    def wait_exit(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._held.release()
