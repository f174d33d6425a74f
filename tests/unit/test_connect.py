"""Client construction guards (no I/O): blocking reads never trip their socket timeout."""

from __future__ import annotations

from worker.connect import http_client, redis_client
from worker.settings import Settings


async def test_socket_timeout_is_above_the_block_time() -> None:
    for block in (0.5, 5.0, 30.0):
        client = redis_client("redis://127.0.0.1:1/0", block_seconds=block)
        assert client.connection_pool.connection_kwargs["socket_timeout"] > block + 5
        await client.aclose()


async def test_the_upstream_read_timeout_is_the_stall_timeout() -> None:
    http = http_client(Settings(stall_timeout_seconds=7.5, connect_timeout_seconds=2.0))
    assert http.timeout.read == 7.5 and http.timeout.connect == 2.0
    await http.aclose()
