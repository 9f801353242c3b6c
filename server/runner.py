"""`docent run`: one machine, everything — embedded Redis (when no REDIS_URL), web, workers, demo data.

The processes are the Procfile's (`web`, `worker`, `ingest`), started as children with the same
environment plus the Redis URL, and stopped together on Ctrl-C or when any of them dies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from store.redis import EmbeddedRedis
from store.settings import Settings

EMBEDDED_REDIS_PORT = 6399
# An idle dramatiq consumer backs off its Redis polling up to 1 s, which alone breaks the 20 ms activation
# target (bench/actors.py: p95 280 ms by default, 18 ms at 20 ms); the price is ~50 polls/s per idle queue.
WORKER_POLL_TIMEOUT_MS = 20
WARM_START_ENV = {"DOCENT_WARM_START": "1"}  # conversation workers load their models at boot
CHILD_STOP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.5


def procfile_commands(settings: Settings) -> dict[str, list[str]]:
    bin_dir = Path(sys.executable).parent
    return {
        "web": [sys.executable, "-m", "server.app"],
        "worker": [
            str(bin_dir / "dramatiq"), "actors.worker", "--queues", "conversation", "approvals",
            "--processes", "1", "--threads", "4",
        ],
        "ingest": [
            str(bin_dir / "dramatiq"), "actors.worker", "--queues", "ingest", "reindex",
            "--processes", "1", "--threads", "1",
        ],
    }  # fmt: skip


class Supervisor:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.children: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: list[str], extra_env: dict[str, str] | None = None) -> None:
        # Own sessions: Ctrl-C reaches only the supervisor, which stops the children in order (Redis last).
        env = {**self.env, **(extra_env or {})}
        self.children[name] = subprocess.Popen(command, env=env, start_new_session=True)

    def first_exited(self) -> str | None:
        return next((n for n, p in self.children.items() if p.poll() is not None), None)

    def stop_all(self) -> None:
        """SIGTERM each child's whole process group (dramatiq forks its workers), SIGKILL what outlives it."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not abandon the shutdown
        for process in self.children.values():
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + CHILD_STOP_TIMEOUT_S
        for process in self.children.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            _signal_group(process, signal.SIGKILL)  # forked workers may outlive their leader


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def announce(settings: Settings) -> None:
    """Print what a person needs to try it: the chat link with a demo token, and the admin key."""
    from server.auth import ensure_admin_key, mint_token

    base = f"http://{settings.host}:{settings.port}"
    user = mint_token(settings, tenant="default", user="demo", groups=("legal",), roles=("user",))
    reviewer = mint_token(settings, tenant="default", user="reviewer", roles=("reviewer",))
    print(
        f"\nDocent is up on {base}\n"
        f"  chat:     {base}/?token={user}\n"
        f"  reviewer: {base}/review?token={reviewer}\n"
        f"  admin:    {base}/admin  (key: {ensure_admin_key(settings)})\n"
        "Ctrl-C stops everything.",
        flush=True,
    )


def _stop_on(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(settings: Settings) -> int:
    # Ctrl-C and SIGTERM both stop the children in order; set explicitly, since a shell may have started
    # this process with SIGINT ignored (background jobs of a non-interactive shell are).
    signal.signal(signal.SIGINT, _stop_on)
    signal.signal(signal.SIGTERM, _stop_on)
    env = dict(os.environ)
    redis_server: EmbeddedRedis | None = None
    if not settings.redis_url:
        redis_server = EmbeddedRedis(settings.data_path / "redis", port=EMBEDDED_REDIS_PORT).start()
        env["DOCENT_REDIS_URL"] = redis_server.url
        print(f"embedded redis on {redis_server.url} (data in {redis_server.directory})", flush=True)
    env["DOCENT_DATA_DIR"] = str(settings.data_path)
    env.setdefault("dramatiq_worker_timeout", str(WORKER_POLL_TIMEOUT_MS))
    supervisor = Supervisor(env)
    try:
        # In a child process, so the models it loads to ingest the demo do not stay in the supervisor.
        if subprocess.run([sys.executable, "-m", "actors.bootstrap"], env=env).returncode != 0:
            print("preparing the models and the demo knowledge base failed (see above)", file=sys.stderr)
            return 2
        child_settings = Settings.from_env(env)
        for name, command in procfile_commands(settings).items():
            supervisor.start(name, command, WARM_START_ENV if name == "worker" else None)
        announce(child_settings)
        while (dead := supervisor.first_exited()) is None:
            time.sleep(POLL_INTERVAL_S)
        print(f"process {dead} exited; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        supervisor.stop_all()
        if redis_server:
            redis_server.stop()
