"""`docent run`: one machine, everything — embedded Redis (when no REDIS_URL), web, workers, demo data.

The processes are the Procfile's (`web`, `worker`, `ingest`), started as children with the same
environment plus the Redis URL and identity, kept running by `server.supervisor` (a crashed child, the
embedded Redis included, is restarted with backoff; only a crash loop stops the stack), and stopped
together on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from server.supervisor import CommandChild, CrashLoop, Supervisor
from store import metrics
from store.exceptions import ConfigError
from store.permissions import secure_tree
from store.redis_owner import OwnedCluster, OwnedRedis
from store.settings import Settings

# An idle dramatiq consumer backs off its Redis polling up to 1 s, which alone breaks the 20 ms activation
# target (bench/actors.py: p95 280 ms by default, 18 ms at 20 ms); the price is ~50 polls/s per idle queue.
WORKER_POLL_TIMEOUT_MS = 20
WARM_START_ENV = {"DOCENT_WARM_START": "1"}  # conversation workers load their models at boot
# The ingest worker's queues are not latency-bound: dramatiq's own cap (1 s) spares Redis its ~200 idle
# polls a second (bench/load.py counts them in the Redis commands per answer).
INGEST_POLL_TIMEOUT_MS = 1000


def procfile_commands(settings: Settings) -> dict[str, list[str]]:
    bin_dir = Path(sys.executable).parent
    return {
        "web": [sys.executable, "-m", "server.app"],
        "worker": [
            str(bin_dir / "dramatiq"), "actors.worker", "--queues", "conversation", "approvals",
            "--processes", str(settings.worker_processes), "--threads", str(settings.worker_threads),
        ],
        "ingest": [
            str(bin_dir / "dramatiq"), "actors.worker", "--queues", "ingest", "reindex",
            "--processes", "1", "--threads", "1",
        ],
    }  # fmt: skip


class RedisChild:
    """The data dir's embedded Redis as a supervised child (restarted on its port, with its password)."""

    name = "redis"

    def __init__(self, owned: OwnedRedis) -> None:
        self.owned = owned

    def start(self) -> int:
        process = self.owned.start().process
        assert process is not None
        return process.pid

    def exit_code(self) -> int | None:
        process = self.owned.server.process
        return None if process is None else process.poll()

    def stop(self) -> None:
        self.owned.close()

    def reap(self) -> None:
        return None  # redis-server does not fork


class ClusterChild:
    """`docent run --cluster`'s embedded Redis Cluster as one supervised child: a node that exits is
    restarted (its replica has been promoted meanwhile; it rejoins as a replica)."""

    name = "cluster"

    def __init__(self, owned: OwnedCluster) -> None:
        self.owned = owned

    def start(self) -> int:
        return self.owned.start()

    def exit_code(self) -> int | None:
        return self.owned.exit_code()

    def stop(self) -> None:
        self.owned.close()

    def reap(self) -> None:
        return None


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


def stack_env(
    settings: Settings, owned: OwnedRedis | None, cluster: OwnedCluster | None = None
) -> dict[str, str]:
    """The children's environment: ours, plus the embedded Redis's URL (password included) and identity;
    with `--cluster`, the cluster is DOCENT_REDIS_URL and the single Redis holds the queues."""
    env = dict(os.environ)
    if owned is not None:
        env["DOCENT_REDIS_URL"] = owned.server.url
        env["DOCENT_REDIS_IDENTITY"] = owned.identity
    if owned is not None and cluster is not None:
        env["DOCENT_BROKER_URL"] = owned.server.url
        env["DOCENT_REDIS_URL"] = cluster.url
        env["DOCENT_REDIS_IDENTITY"] = cluster.identity
    env["DOCENT_DATA_DIR"] = str(settings.data_path)
    # This stack's own metrics directory, whatever the caller's environment said: never another stack's.
    env[metrics.MULTIPROC_ENV] = str(metrics.multiproc_dir(settings.data_path))
    env.setdefault("dramatiq_worker_timeout", str(WORKER_POLL_TIMEOUT_MS))
    return env


def start_redis(settings: Settings, supervisor: Supervisor) -> OwnedRedis | None:
    if settings.redis_url:
        return None
    owned = OwnedRedis(settings)
    supervisor.start(RedisChild(owned))
    print(f"embedded redis on {owned.server.display_url} (data in {owned.directory})", flush=True)
    return owned


def start_cluster(settings: Settings, supervisor: Supervisor) -> OwnedCluster:
    owned = OwnedCluster(settings)
    supervisor.start(ClusterChild(owned))
    print(f"embedded redis cluster on {owned.cluster.display_url} (data in {owned.directory})", flush=True)
    return owned


def start_children(settings: Settings, supervisor: Supervisor, env: dict[str, str]) -> None:
    for name, command in procfile_commands(settings).items():
        child_env = {**env, **(WARM_START_ENV if name == "worker" else {})}
        if name == "ingest" and "dramatiq_worker_timeout" not in os.environ:
            child_env["dramatiq_worker_timeout"] = str(INGEST_POLL_TIMEOUT_MS)
        supervisor.start(CommandChild(name, command, child_env))


def run(settings: Settings, *, cluster: bool = False) -> int:
    """`cluster`: the multi-node topology on one machine (an embedded 3+3 Redis Cluster for the data,
    the embedded single Redis for dramatiq's queues); needs DOCENT_REDIS_URL unset."""
    # Ctrl-C and SIGTERM both stop the children in order; set explicitly, since a shell may have started
    # this process with SIGINT ignored (background jobs of a non-interactive shell are).
    signal.signal(signal.SIGINT, _stop_on)
    signal.signal(signal.SIGTERM, _stop_on)
    secure_tree(settings.data_path)
    metrics.reset_multiproc_dir(metrics.multiproc_dir(settings.data_path))  # the last run's samples go
    supervisor = Supervisor()
    try:
        if cluster and settings.redis_url:
            raise ConfigError("`docent run --cluster` starts its own cluster: unset DOCENT_REDIS_URL")
        owned = start_redis(settings, supervisor)
        env = stack_env(settings, owned, start_cluster(settings, supervisor) if cluster else None)
        # In a child process, so the models it loads to ingest the demo do not stay in the supervisor.
        if subprocess.run([sys.executable, "-m", "actors.bootstrap"], env=env).returncode != 0:
            print("preparing the models and the demo knowledge base failed (see above)", file=sys.stderr)
            return 2
        start_children(settings, supervisor, env)
        announce(Settings.from_env(env))
        supervisor.watch()
        return 0
    except CrashLoop as exc:
        print(f"crash loop: {exc}; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        supervisor.stop_all()
