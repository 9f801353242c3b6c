"""A port kept for a child process that will listen on it: `HeldPort`.

A port chosen free (`store.redis.free_port`) and handed to a child to bind later lies in the kernel's
ephemeral range: until the child binds it, any process's outgoing connection may take it as its local
port, and the child then exits with "address already in use" (the class of stop 22's CI failure, for a
web process instead of a cluster node). A held port is bound by this process (SO_REUSEADDR, never
listening) from the choice until `release`:

- no outgoing connection takes it (connect() skips ports that a socket bound explicitly), and a
  `bind(("127.0.0.1", 0))` elsewhere is never handed it (the bind would conflict with ours);
- a child that binds it with SO_REUSEADDR and listens (uvicorn, redis-server, http.server all do) still
  can, and gets every connection (a socket that does not listen receives none);
- between a SIGKILL of that child and its restart on the same port, the port stays ours.
"""

from __future__ import annotations

import socket
from typing import Self

HOST = "127.0.0.1"


class HeldPort:
    """`HeldPort().port`: a free port on 127.0.0.1, kept from other processes until `release()`."""

    def __init__(self) -> None:
        self._socket: socket.socket | None = socket.socket()
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((HOST, 0))
        self.port = int(self._socket.getsockname()[1])

    def release(self) -> None:
        """Let the port go (idempotent); a child listening on it keeps listening."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def listening_socket(port: int = 0) -> socket.socket:
    """A socket listening on `port` (0: one the OS chooses), for a server in this process
    (`uvicorn.Server.serve(sockets=[...])`: no window between choosing the port and binding it), or as
    another process's listener on a port Docent wants (`with listening_socket(port):`). SO_REUSEADDR, as
    redis-server and uvicorn bind: a port free by `store.redis.port_is_free` may still hold a connection
    in TIME_WAIT (a server an earlier test stopped), which a plain bind refuses (stop 23's CI failure)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, port))
    listener.listen(128)
    return listener
