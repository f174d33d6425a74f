"""The private redis-server processes the tests and the demo start: a port taken between picking it
and binding it (parallel test processes) is not mistaken for a server of our own."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from worker.redisproc import RedisServer, free_port


def test_a_port_taken_before_the_bind_is_replaced(redis_server: RedisServer) -> None:
    """The first port picked is held by another redis-server (which would answer PING): the server
    moves to the next port and is really its own process there."""
    ports: Iterator[int] = iter([redis_server.port, free_port()])
    with RedisServer(pick_port=lambda: next(ports)) as server:
        assert server.port != redis_server.port
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
            sock.sendall(b"INFO server\r\n")
            reply = sock.recv(65536)
        assert server.process is not None
        assert f"process_id:{server.process.pid}\r\n".encode() in reply


def test_a_fixed_port_held_by_another_server_fails_to_start(redis_server: RedisServer) -> None:
    with pytest.raises(RuntimeError, match="Address already in use"):
        RedisServer(port=redis_server.port).start(timeout=10)
