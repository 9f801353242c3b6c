"""actors.testing.ports: a port held for a child that binds it later, and a listening socket for uvicorn."""

from __future__ import annotations

import socket

import pytest

from actors.testing.ports import HOST, HeldPort, listening_socket
from store.redis import port_is_free


def test_a_held_port_is_refused_to_a_plain_bind_and_served_by_a_reuseaddr_listener() -> None:
    with HeldPort() as held:
        with socket.socket() as plain, pytest.raises(OSError):
            plain.bind((HOST, held.port))  # what an outgoing connection's or another bind(0)'s port needs
        for _ in range(2):  # a listener, then (after a SIGKILL) its restart on the same port
            with socket.socket() as server:
                server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn, redis-server
                server.bind((HOST, held.port))
                server.listen()
                with socket.create_connection((HOST, held.port), timeout=30) as client:
                    accepted, _ = server.accept()  # the connection reached the listener, not the holder
                    with accepted:
                        accepted.sendall(b"hi")
                        assert client.recv(2) == b"hi"
    held.release()  # idempotent
    assert port_is_free(held.port)


def test_a_listening_socket_accepts_at_once_on_a_port_the_os_chose() -> None:
    with listening_socket() as listener:
        port = listener.getsockname()[1]
        assert port > 0
        with socket.create_connection((HOST, port), timeout=30):
            accepted, _ = listener.accept()
            accepted.close()
