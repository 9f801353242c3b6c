"""An embedded Redis Cluster on one machine: N primaries with R replicas each, every node a real
redis-server child (store.redis.EmbeddedRedis in cluster mode) under its own data dir, on free ports.

`EmbeddedCluster.start()` starts the nodes, introduces them (CLUSTER MEET), splits the 16384 slots among
the primaries, attaches each replica (CLUSTER REPLICATE) and waits until every node reports
`cluster_state:ok` and every replica's link to its primary is up. A restart over the same directories
and ports rejoins the cluster its nodes.conf files describe (no new slot assignment). The tests use it
(tests/conftest.py `redis_cluster`), `docent run --cluster` for development.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import redis

from store.exceptions import ConfigError
from store.redis import (
    CLUSTER_NODE_TIMEOUT_MS,
    CLUSTER_SCHEME,
    REDIS_USER,
    EmbeddedRedis,
    port_is_free,
    start_choosing_again,
)

SLOTS = 16384
BUS_PORT_OFFSET = 10000  # a node's cluster bus listens on its port + 10000
LOWEST_NODE_PORT = 10000
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL_LOW = 32768  # Linux's default first ephemeral port
FORM_TIMEOUT_S = 30.0
POLL_S = 0.05


def node_port_range() -> tuple[int, int]:
    """Ports whose bus port (+10000) also lies below the kernel's ephemeral range: no outgoing
    connection of any process can hold one as its local port between the choice and the node's bind."""
    try:
        low = int(EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = DEFAULT_EPHEMERAL_LOW
    return LOWEST_NODE_PORT, max(low - BUS_PORT_OFFSET, LOWEST_NODE_PORT + 1000)


def free_node_ports(count: int) -> list[int]:
    """`count` ports free now whose cluster bus ports (+10000) are free too."""
    span = node_port_range()
    ports: set[int] = set()
    while len(ports) < count:
        port = random.randrange(*span)
        if port not in ports and port_is_free(port) and port_is_free(port + BUS_PORT_OFFSET):
            ports.add(port)
    return sorted(ports)


def slot_ranges(primaries: int) -> list[range]:
    """The 16384 slots split into `primaries` contiguous ranges."""
    bounds = [SLOTS * i // primaries for i in range(primaries + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(primaries)]


class EmbeddedCluster:
    """`primaries` primaries, each with `replicas` replicas, on loopback; `stop()` ends every node."""

    def __init__(
        self, directory: Path, *, primaries: int = 3, replicas: int = 1, password: str = "",
        fsync: str = "everysec", ports: list[int] | None = None,
        node_timeout_ms: int = CLUSTER_NODE_TIMEOUT_MS,
    ) -> None:  # fmt: skip
        if primaries < 1 or replicas < 0:
            raise ConfigError("a cluster needs at least one primary")
        count = primaries * (1 + replicas)
        if ports is not None and len(ports) != count:
            raise ConfigError(f"{primaries} primaries with {replicas} replicas each need {count} ports")
        self.directory = directory
        self.primaries = primaries
        self.password = password
        self.chosen_ports = ports is None  # ours to change when another process takes one first
        self.options: dict[str, Any] = dict(password=password, fsync=fsync, node_timeout_ms=node_timeout_ms)
        self.nodes = self._nodes(ports or free_node_ports(count))

    def _nodes(self, ports: list[int]) -> list[EmbeddedRedis]:
        return [EmbeddedRedis(self.directory / f"node-{p}", p, cluster=True, **self.options) for p in ports]

    @property
    def url(self) -> str:
        auth = f"{REDIS_USER}:{self.password}@" if self.password else ""
        return CLUSTER_SCHEME + auth + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[: self.primaries])

    @property
    def display_url(self) -> str:
        return CLUSTER_SCHEME + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[: self.primaries])

    def node_client(self, node: EmbeddedRedis) -> redis.Redis:
        """A plain connection to one node (admin commands: CLUSTER, INFO, DEBUG)."""
        return redis.Redis.from_url(node.url)

    def start(self) -> EmbeddedCluster:
        """Start every node and form (or rejoin) the cluster; on any failure no node is left running.
        Ports chosen here that another process takes before a node binds are chosen again."""
        return start_choosing_again(self._start, self._choose_ports if self.chosen_ports else None)

    def _choose_ports(self) -> None:
        self.nodes = self._nodes(free_node_ports(len(self.nodes)))

    def _start(self) -> EmbeddedCluster:
        try:
            for node in self.nodes:
                node.start()
            if not self._formed():
                self._form()
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def _formed(self) -> bool:
        """The nodes already hold a cluster (a restart over their nodes.conf)."""
        with self.node_client(self.nodes[0]) as client:
            info: Any = client.cluster("INFO")
        return int(_cluster_info(info).get("cluster_slots_assigned", 0)) == SLOTS

    def _form(self) -> None:
        first = self.node_client(self.nodes[0])
        try:
            for node in self.nodes[1:]:
                first.cluster("MEET", "127.0.0.1", node.port)
        finally:
            first.close()
        for node, slots in zip(self.nodes, slot_ranges(self.primaries), strict=False):
            with self.node_client(node) as client:
                client.cluster("ADDSLOTS", *slots)
        self._wait(lambda: all(len(self._known(n)) == len(self.nodes) for n in self.nodes), "nodes to meet")
        ids = [self._node_id(n) for n in self.nodes[: self.primaries]]
        for i, node in enumerate(self.nodes[self.primaries :]):
            with self.node_client(node) as client:
                client.cluster("REPLICATE", ids[i % self.primaries])

    def wait_ok(self, timeout_s: float = FORM_TIMEOUT_S) -> None:
        """Until every running node says `cluster_state:ok`, every replica is linked to its primary and
        every node sees the running replicas as replicas."""
        self._wait(lambda: all(self._node_ok(n) for n in self.running()), "cluster_state ok", timeout_s)

    def running(self) -> list[EmbeddedRedis]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def _node_ok(self, node: EmbeddedRedis) -> bool:
        with self.node_client(node) as client:
            try:
                info = _cluster_info(client.cluster("INFO"))
                replication: Any = client.info("replication")
            except redis.RedisError:
                return False
        linked = replication.get("role") == "master" or replication.get("master_link_status") == "up"
        replicas = sum("slave" in flags and "fail" not in flags for flags in self._flags(node))
        settled = replicas == len(self.running()) - self.primaries
        covered = info.get("cluster_state") == "ok" and int(info.get("cluster_slots_ok", 0)) == SLOTS
        return covered and linked and settled

    def _flags(self, node: EmbeddedRedis) -> list[str]:
        """The flags (`myself,master`, `slave`, `master,fail`...) of every node this node knows."""
        return [line.split()[2] for line in self._known(node)]

    def _known(self, node: EmbeddedRedis) -> list[str]:
        with self.node_client(node) as client:
            raw: Any = client.execute_command("CLUSTER", "NODES")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return [line for line in text.splitlines() if line.strip() and "handshake" not in line]

    def _node_id(self, node: EmbeddedRedis) -> str:
        with self.node_client(node) as client:
            raw: Any = client.execute_command("CLUSTER", "MYID")
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def _wait(self, done: Any, what: str, timeout_s: float = FORM_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if done():
                    return
            except redis.RedisError:
                pass
            time.sleep(POLL_S)
        raise ConfigError(f"embedded cluster: timed out waiting for {what}")

    def primary_of(self, key: str) -> EmbeddedRedis:
        """The node that serves `key`'s slot now."""
        with self.node_client(self.nodes[0]) as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            shards: Any = client.execute_command("CLUSTER", "SLOTS")
        for start, end, primary, *_ in shards:
            if int(start) <= slot <= int(end):
                port = int(primary[1])
                return next(n for n in self.nodes if n.port == port)
        raise ConfigError(f"no node serves slot {slot}")

    def fail_over(self, dead: EmbeddedRedis) -> EmbeddedRedis | None:
        """`dead`'s process has exited (its supervisor saw it): when it was a primary, its replica takes
        over now with `CLUSTER FAILOVER FORCE` (elected by the other primaries at once), instead of after the
        cluster's own failure detection (`cluster-node-timeout`, gossip, then a 0.5-1 s election delay:
        3.0-4.9 s on this machine under load, whatever the timeout). Only for a process known to be dead: a
        primary that is merely unreachable is left to the cluster (no split brain). Returns the replica
        asked, None when `dead` had no live replica (a replica itself, or already failed over)."""
        alive = [n for n in self.running() if n is not dead]
        if not alive:
            return None
        table = [line.split() for line in self._known(alive[0])]  # id, address, flags, primary id, ...
        dead_id = next((f[0] for f in table if _node_port(f[1]) == dead.port), None)
        ports = [_node_port(f[1]) for f in table if f[3] == dead_id and "fail" not in f[2]]
        replica = next((n for n in alive if n.port in ports), None)
        if dead_id is None or replica is None:
            return None
        with self.node_client(replica) as client:
            try:
                client.execute_command("CLUSTER", "FAILOVER", "FORCE")
            except redis.RedisError:  # promoted meanwhile, or its link state refuses: the cluster decides
                return None
        return replica

    def flushall(self) -> None:
        """Empty every primary (their replicas follow)."""
        for node in self.nodes:
            with self.node_client(node) as client:
                if client.info("replication").get("role") == "master":
                    client.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _cluster_info(raw: Any) -> dict[str, str]:
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _node_port(address: str) -> int:
    """The client port of a CLUSTER NODES address `ip:port@cport`."""
    return int(address.split("@")[0].rsplit(":", 1)[1])
