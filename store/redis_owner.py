"""The embedded Redis a data dir owns: its port, its password, its lock and the identity of this start.

Under `{data_dir}/redis` (directory 0700, files 0600):

    port        the port, chosen free at the first start and reused while it is free
    password    `requirepass`, generated once
    lock        flock'ed by `docent run` and inherited by redis-server: one Redis per data dir, even
                when a killed supervisor left its Redis running

An explicit `DOCENT_REDIS_PORT` that is taken is a `PortInUse` error naming it. Each start writes a new
random identity to `docent:identity` (store.redis_identity); `docent run` passes it to its children in
DOCENT_REDIS_IDENTITY and they verify it at readiness.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from pathlib import Path

from store.cluster import EmbeddedCluster, free_node_ports
from store.exceptions import ConfigError, PortInUse
from store.permissions import private_dir
from store.redis import EmbeddedRedis, free_port, port_is_free, sync_client
from store.redis_identity import claim
from store.settings import Settings

PORT_FILE = "port"
PASSWORD_FILE = "password"
LOCK_FILE = "lock"
PASSWORD_BYTES = 32


def _read(path: Path) -> str:
    return path.read_text().strip() if path.exists() else ""


def _write_private(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")


def resolve_port(directory: Path, explicit: int) -> int:
    """The explicit port (PortInUse when taken), else the recorded one while free, else a new free one."""
    if explicit:
        if not port_is_free(explicit):
            raise PortInUse(f"DOCENT_REDIS_PORT {explicit} is taken by another process", port=explicit)
        return explicit
    recorded = _read(directory / PORT_FILE)
    if recorded.isdigit() and port_is_free(int(recorded)):
        return int(recorded)
    port = free_port()
    _write_private(directory / PORT_FILE, str(port))
    return port


def password(directory: Path) -> str:
    path = directory / PASSWORD_FILE
    if not _read(path):
        _write_private(path, secrets.token_urlsafe(PASSWORD_BYTES))
    return _read(path)


def lock(directory: Path) -> int:
    """An open, exclusively locked file descriptor on the data dir's Redis lock (ConfigError if held)."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(
            f"the embedded Redis of {directory.parent} is in use (another `docent run`, or a Redis it left "
            "running): stop it first"
        ) from None
    return fd


def claim_at(url: str, identity: str) -> None:
    """Write this start's identity into the Redis (or cluster) at `url`."""
    client = sync_client(url)
    try:
        claim(client, identity)
    finally:
        client.close()


class OwnedRedis:
    """The data dir's embedded Redis: started (and restarted) on its port, claimed with a fresh identity."""

    def __init__(self, settings: Settings) -> None:
        self.directory = private_dir(settings.data_path / "redis")
        self.lock_fd = lock(self.directory)
        self.identity = secrets.token_hex(16)
        port = resolve_port(self.directory, settings.redis_port)
        self.server = EmbeddedRedis(
            self.directory, port, password=password(self.directory), fsync=settings.redis_fsync,
            lock_fd=self.lock_fd,
        )

    def start(self) -> EmbeddedRedis:
        """Start (or restart, same port and password) and write this start's identity."""
        self.server.start()
        claim_at(self.server.url, self.identity)
        return self.server

    def stop(self) -> None:
        self.server.stop()

    def close(self) -> None:
        self.stop()
        os.close(self.lock_fd)


CLUSTER_DIR = "redis-cluster"
PORTS_FILE = "ports"


class OwnedCluster:
    """`docent run --cluster`'s embedded Redis Cluster (3 primaries + 3 replicas) under
    `{data_dir}/redis-cluster`: ports chosen once and recorded (a restart rejoins the cluster the nodes'
    nodes.conf describe), one generated password, the same lock and identity rules as OwnedRedis."""

    def __init__(self, settings: Settings) -> None:
        self.directory = private_dir(settings.data_path / CLUSTER_DIR)
        self.lock_fd = lock(self.directory)
        self.identity = secrets.token_hex(16)
        recorded = [int(p) for p in _read(self.directory / PORTS_FILE).split()]
        taken = [p for p in recorded if not port_is_free(p)]
        if taken:
            raise PortInUse(f"the cluster's port {taken[0]} is taken by another process", port=taken[0])
        ports = recorded or free_node_ports(6)
        _write_private(self.directory / PORTS_FILE, " ".join(map(str, ports)))
        self.cluster = EmbeddedCluster(
            self.directory, password=password(self.directory), fsync=settings.redis_fsync, ports=ports
        )

    @property
    def url(self) -> str:
        return self.cluster.url

    def start(self) -> int:
        """Start the nodes that are not running (all of them the first time) and write the identity."""
        if not self.cluster.running():
            self.cluster.start()
        else:
            for node in self.cluster.nodes:
                if node.process is None or node.process.poll() is not None:
                    self.cluster.fail_over(node)  # a dead primary's replica takes over now (store/cluster.py)
                    node.start()
            self.cluster.wait_ok()
        claim_at(self.cluster.url, self.identity)
        first = self.cluster.nodes[0].process
        assert first is not None
        return first.pid

    def exit_code(self) -> int | None:
        """The exit code of a node that died (the supervisor then restarts it), None while all run."""
        for node in self.cluster.nodes:
            if node.process is not None and node.process.poll() is not None:
                return node.process.returncode
        return None

    def close(self) -> None:
        self.cluster.stop()
        os.close(self.lock_fd)
