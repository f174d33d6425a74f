"""Client construction guards (no I/O): blocking reads never trip their socket timeout."""

from __future__ import annotations

from worker.connect import http_client, redis_client
from worker.settings import Settings
from worker.upstream.http import StreamLimits


async def test_socket_timeout_is_above_the_block_time() -> None:
    for block in (0.5, 5.0, 30.0):
        client = redis_client("redis://127.0.0.1:1/0", block_seconds=block)
        assert client.connection_pool.connection_kwargs["socket_timeout"] > block + 5
        await client.aclose()


async def test_stalls_are_the_stream_limits_job_not_a_read_timeout() -> None:
    """No per-read timer (it cost a timer per chunk); the stall timeout rides in the stream limits."""
    settings = Settings(stall_timeout_seconds=7.5, connect_timeout_seconds=2.0)
    http = http_client(settings)
    assert http.timeout.read is None and http.timeout.connect == 2.0
    assert StreamLimits.from_settings(settings, max_tokens=10).stall_seconds == 7.5
    await http.aclose()
