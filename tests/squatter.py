"""Another process's listener on a port, for tests of what Docent does when its port is taken."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def listening_on(port: int) -> Iterator[socket.socket]:
    """Listen on 127.0.0.1:`port` until the block ends.

    SO_REUSEADDR, as redis-server binds: a port free by `port_is_free` may still hold a connection in
    TIME_WAIT (a node an earlier test stopped), which a plain bind refuses (the CI failure of stop 23)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
        yield s
