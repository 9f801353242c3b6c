"""A real RabbitMQ broker for tests and benches: Debian's `rabbitmq-server` (apt-get install
rabbitmq-server) started as a child under a temporary directory, on free ports (AMQP, Erlang
distribution, its own epmd), no plugins; `url` is the `amqp://` URL for DOCENT_BROKER_URL.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from store.redis import free_port

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
START_TIMEOUT_S = 60.0
POLL_S = 0.2


def available() -> bool:
    return Path(SERVER).exists() and shutil.which("erl") is not None


class RabbitServer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def env(self) -> dict[str, str]:
        home = self.directory / "home"
        home.mkdir(parents=True, exist_ok=True)
        plugins = self.directory / "enabled_plugins"
        plugins.write_text("[].\n")
        return {
            **os.environ, "HOME": str(home), "RABBITMQ_NODENAME": f"docent{self.port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()), "ERL_EPMD_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"), "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_CONFIG_FILE": str(self.directory / "none"),
        }  # fmt: skip

    def start(self) -> RabbitServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "stdout.log").open("wb")
        self.process = subprocess.Popen(
            [SERVER], env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited with {self.process.returncode} (see {log.name})")
            if self._accepts():
                return self
            time.sleep(POLL_S)
        self.stop()
        raise RuntimeError("rabbitmq-server did not start in time")

    def _accepts(self) -> bool:
        try:
            import pika

            pika.BlockingConnection(pika.URLParameters(self.url)).close()
        except Exception:
            return False
        return True

    def stop(self) -> None:
        """SIGTERM to its process group (the Erlang VM and its epmd), then SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, 15)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait()

    def __enter__(self) -> RabbitServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()



