"""The multi-process topology `docent chaos --topology cluster` breaks: its processes and its faults.

A Redis Cluster (3 primaries + 3 replicas, `store.cluster`, with a password), a single Redis for dramatiq's
queues, 2 web processes (`python -m server.app`, each on its own port) and 3 conversation worker processes
(`actors.chaos.workers`: the production worker with the crash hook). Faults: SIGKILL a worker's process
group (restarted at once), SIGKILL a web process (restarted at once on the same port; its clients
reconnect to the other one), and once per run SIGKILL one Redis primary, whose replica takes over (at once
by `CLUSTER FAILOVER FORCE`, as `docent run --cluster`'s supervisor does on seeing a node's exit, or with
`--failover cluster` by the cluster's own failure detection); the killed node is started again once the
failover is done and rejoins as the new primary's replica. With `replica_lag_ms` > 0 the primary's
replication link is cut that long before the kill (the replica cannot re-authenticate meanwhile): what a
replica that far behind would lose.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from actors.chaos.workers import Workers
from actors.testing.ports import HeldPort
from store.cluster import EmbeddedCluster
from store.redis import EmbeddedRedis, key_slot

WEBS = 2
WORKERS = 3
HEALTH_TIMEOUT_S = 30.0
HEALTH_POLL_S = 0.1
STOP_TIMEOUT_S = 5.0
FAILOVER_TIMEOUT_S = 30.0
CUT_LINK_PASSWORD = "the-link-is-cut"  # the replica's masterauth while its link is cut (never a password)


def in_slots(slots: list[tuple[int, int]], key: str) -> bool:
    slot = key_slot(key)
    return any(start <= slot <= end for start, end in slots)


class WebProcess:
    """`python -m server.app` on a fixed port, in its own session; SIGKILLed and started again in place."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        # Held until `stop`: between a SIGKILL and the restart in place no other process takes the port.
        self._held = HeldPort()
        self.port = self._held.port
        self.env = {**env, "DOCENT_PORT": str(self.port)}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.ready_at = 0.0  # when it first answered /healthz since its (re)start; 0 = not yet
        self.starts = 0
        self.restarts: list[tuple[int, float, float]] = []  # (port, started_at, ready_at) of each restart

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat"

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "server.app"], env=self.env, stdout=out,
                                            stderr=out, start_new_session=True)  # fmt: skip
        self.started_at, self.ready_at = time.monotonic(), 0.0
        self.starts += 1

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_healthy(self, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"web process on port {self.port} exited; see {self.log_path}")
            if self.check_ready():
                return
            time.sleep(HEALTH_POLL_S)
        raise RuntimeError(f"web process on port {self.port} did not become healthy")

    def check_ready(self) -> bool:
        """Whether it answers /healthz now; the first time since its start sets `ready_at`."""
        if self.ready_at:
            return True
        if self.alive() and self._healthy():
            self.ready_at = time.monotonic()
            if self.starts > 1:
                self.restarts.append((self.port, self.started_at, self.ready_at))
            return True
        return False

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def kill(self) -> None:
        if self.process is not None and self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
        self._held.release()


@dataclass
class PrimaryKill:
    """What one primary kill did: the node, how long the failover took, the cut link's length."""

    port: int
    replica_port: int
    lag_ms: int
    slots: list[tuple[int, int]]  # the slot ranges it served
    cut_at: float = 0.0  # time.monotonic() of the link cut (of the kill when there is none)
    killed_at: float = 0.0
    failover_s: float = 0.0
    rejoined_s: float = 0.0
    forced: bool = False  # the supervisor asked the replica to take over (CLUSTER FAILOVER FORCE)
    aimed_at: str = ""  # "ask", or the agent model call in flight when the link was cut

    def summary(self) -> dict[str, float | bool | str]:
        times = {"failover_s": round(self.failover_s, 2), "rejoined_s": round(self.rejoined_s, 2)}
        node = {"port": self.port, "replica_port": self.replica_port, "lag_ms": self.lag_ms}
        return {**node, **times, "forced": self.forced, "aimed_at": self.aimed_at}


class Topology:
    """The cluster, the queues' Redis, the web processes and the workers, with the faults to inject."""

    def __init__(self, cluster: EmbeddedCluster, env: dict[str, str], log_dir: Path) -> None:
        self.cluster = cluster
        self.webs = [WebProcess(env, log_dir / f"web-{n}.log") for n in range(WEBS)]
        self.workers = Workers(env, WORKERS, log_dir)
        self.web_kills = 0
        self.primary_kills: list[PrimaryKill] = []

    def start(self) -> None:
        self.workers.start_all()
        for web in self.webs:
            web.start()
        for web in self.webs:
            web.wait_healthy()

    def stop(self) -> None:
        for web in self.webs:
            web.stop()
        self.workers.stop_all()

    @property
    def web_ready(self) -> list[tuple[int, float, float]]:
        """(port, started_at, ready_at) of every web process restart that came to serve."""
        return sorted(r for web in self.webs for r in web.restarts)

    def urls(self) -> list[str]:
        return [web.ws_url for web in self.webs]

    def kill_worker(self, index: int) -> None:
        self.workers.kill(index)  # SIGKILL of its process group, started again at once

    def kill_web(self, index: int, min_other_up_s: float) -> bool:
        """SIGKILL web `index` and start it again, unless another one has not answered `/healthz` for
        `min_other_up_s` yet: a restart takes seconds before the process serves (3.8 s p50 under load), so
        counting from its start could leave no web process serving at all, a rolling restart never does."""
        others = [w for n, w in enumerate(self.webs) if n != index]
        now = time.monotonic()
        if any(not w.alive() or not w.check_ready() or now - w.ready_at < min_other_up_s for w in others):
            return False
        self.webs[index].kill()
        self.web_kills += 1
        self.webs[index].start()
        return True

    def revive(self) -> None:
        """Start again whatever died by itself (a worker's crash point exits its group); note when a
        restarted web process answers again."""
        self.workers.revive()
        for web in self.webs:
            if not web.alive():
                web.start()
            else:
                web.check_ready()  # notes when a restarted one serves again

    def kill_primary(self, node: EmbeddedRedis, lag_ms: int, supervised: bool = True) -> PrimaryKill:
        """SIGKILL primary `node` (after cutting its replication link for `lag_ms`), wait for its replica's
        promotion (`supervised`: forced at once, as the process supervisor does; else the cluster's own
        failure detection), start the node again and wait until it has rejoined as a replica."""
        replica = self.replica_of(node)
        slots = self.slots_of(node)
        kill = PrimaryKill(port=node.port, replica_port=replica.port, lag_ms=lag_ms, slots=slots)
        kill.cut_at = time.monotonic()
        if lag_ms:
            self._cut_link(node, replica)
            time.sleep(lag_ms / 1000)
        assert node.process is not None
        os.kill(node.process.pid, signal.SIGKILL)
        node.process.wait()
        killed_at = kill.killed_at = time.monotonic()
        if lag_ms:
            self._config(replica, "masterauth", self.cluster.password)  # it may authenticate again
        if supervised:  # the supervisor saw the exit: the replica takes over now (store/cluster.py fail_over)
            kill.forced = self.cluster.fail_over(node) is not None
        self._wait_role(replica, "master")
        kill.failover_s = time.monotonic() - killed_at
        node.start()  # its nodes.conf names the cluster: it learns of the failover, follows the new primary
        self.cluster.wait_ok(FAILOVER_TIMEOUT_S)
        kill.rejoined_s = time.monotonic() - killed_at
        self.primary_kills.append(kill)
        return kill

    def primaries(self) -> list[EmbeddedRedis]:
        return [n for n in self.cluster.running() if self._info(n).get("role") == "master"]

    def replica_of(self, node: EmbeddedRedis) -> EmbeddedRedis:
        port = int(self._info(node)["slave0"]["port"])
        return next(n for n in self.cluster.nodes if n.port == port)

    def slots_of(self, node: EmbeddedRedis) -> list[tuple[int, int]]:
        """The slot ranges primary `node` serves."""
        with self.cluster.node_client(node) as client:
            shards: Any = client.execute_command("CLUSTER", "SLOTS")
        return [(int(start), int(end)) for start, end, primary, *_ in shards if int(primary[1]) == node.port]

    def _cut_link(self, primary: EmbeddedRedis, replica: EmbeddedRedis) -> None:
        self._config(replica, "masterauth", CUT_LINK_PASSWORD)  # its reconnections are refused from now on
        with self.cluster.node_client(primary) as client:
            client.execute_command("CLIENT", "KILL", "TYPE", "replica")

    def _config(self, node: EmbeddedRedis, name: str, value: str) -> None:
        with self.cluster.node_client(node) as client:
            client.config_set(name, value)

    def _wait_role(self, node: EmbeddedRedis, role: str) -> None:
        deadline = time.monotonic() + FAILOVER_TIMEOUT_S
        while self._info(node).get("role") != role:
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {node.port} did not become {role}")
            time.sleep(HEALTH_POLL_S)

    def _info(self, node: EmbeddedRedis) -> dict[str, Any]:
        with self.cluster.node_client(node) as client:
            try:
                return dict(client.info("replication"))
            except redis.RedisError:
                return {}
