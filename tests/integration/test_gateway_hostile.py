"""Hostile and odd HTTP input against the gateway, on a real redis-server (a worker and the
simulator behind it): bodies that never arrive or cannot be decoded, resume ids at the edge of the
stream id space, job ids a URL cannot carry, a Redis that stops answering. Each answer is a clear
status (never a 500, never a hang), and the gateway goes on serving others."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import msgspec
import pytest

from worker.redisproc import RedisServer
from worker.settings import Settings

from .gatewaykit import KEYS, RunningGateway, bearer, read_sse, start_gateway, tenants

pytestmark = pytest.mark.integration

MAX_ID = f"{2**64 - 1}-{2**64 - 1}"  # the largest Redis stream id


@pytest.fixture
async def web() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(20.0)) as c:
        yield c


def _job(job_id: str, model: str = "m;tokens=3") -> dict[str, Any]:
    return {"id": job_id, "model": model, "input": "hello"}


def _address(gw: RunningGateway) -> tuple[str, int]:
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def _exchange(gw: RunningGateway, head: bytes, body: bytes = b"", timeout: float = 10.0) -> bytes:
    """Send ``head`` and ``body`` on a new connection; everything the server sends until it closes."""
    reader, writer = await asyncio.open_connection(*_address(gw))
    try:
        writer.write(head + body)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await reader.read()
    finally:
        writer.close()


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def _body(reply: bytes) -> bytes:
    return reply.partition(b"\r\n\r\n")[2]


# ------------------------------------------------------------------------------------ bodies


async def test_a_body_that_never_arrives_is_408_and_the_connection_closes(
    gateway: Callable[..., Awaitable[RunningGateway]],
    web: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that sends a request head and then its body slowly, or never (a slowloris on the
    body), holds no handler nor buffer past the body's deadline: 408, and the connection closes."""
    from worker.gateway import bounds

    monkeypatch.setattr(bounds, "BODY_SECONDS", 0.5)
    gw = await gateway()
    assert (await web.post(f"{gw.url}/v1/jobs", json=_job("b-1"), headers=bearer("acme"))).status_code == 201
    key = KEYS["acme"].encode()
    for path in (b"/v1/jobs", b"/v1/jobs/b-1/cancel"):
        head = b"POST %s HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer %s\r\nContent-Length: 100\r\n\r\n" % (
            path,
            key,
        )
        started = time.monotonic()
        try:
            reply = await _exchange(gw, head, b'{"model":', timeout=10)
        except TimeoutError:
            pytest.fail(f"POST {path.decode()} with a body that never arrives was held 10 s")
        assert _status(reply) == 408, reply[:300]
        assert b'"code":"body_timeout"' in _body(reply)
        assert time.monotonic() - started < 5
    # a body trickled a byte at a time: the deadline is the whole body's, not one between bytes
    reader, writer = await asyncio.open_connection(*_address(gw))
    writer.write(
        b"POST /v1/jobs HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer %s\r\nContent-Length: 400\r\n\r\n" % key
    )
    reply = b""
    async with asyncio.timeout(10):
        for _ in range(400):
            writer.write(b" ")
            await writer.drain()
            try:
                async with asyncio.timeout(0.05):
                    reply = await reader.read()
            except TimeoutError:
                continue
            break
    writer.close()
    assert reply and _status(reply) == 408, reply[:300]
    ok = await web.post(f"{gw.url}/v1/jobs", json=_job("b-2"), headers=bearer("acme"))
    assert ok.status_code == 201, "the gateway still serves others"


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (b"Content-Encoding: gzip\r\nContent-Length: 9\r\n", b"not gzip!"),
        (b"Content-Encoding: deflate\r\nContent-Length: 9\r\n", b"not zlib!"),
        (b"Transfer-Encoding: chunked\r\n", b"zz\r\nabc\r\n0\r\n\r\n"),
    ],
    ids=["gzip", "deflate", "chunk-size"],
)
async def test_a_body_that_cannot_be_decoded_is_400_not_500(
    gateway: Callable[..., Awaitable[RunningGateway]], web: httpx.AsyncClient, headers: bytes, body: bytes
) -> None:
    gw = await gateway()
    assert (await web.post(f"{gw.url}/v1/jobs", json=_job("z-1"), headers=bearer("acme"))).status_code == 201
    key = KEYS["acme"].encode()
    for path in (b"/v1/jobs", b"/v1/jobs/z-1/cancel"):
        head = b"POST %s HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer %s\r\n%s\r\n" % (path, key, headers)
        reply = await _exchange(gw, head, body)
        assert _status(reply) == 400, reply[:400]
        assert b"application/json" in reply.partition(b"\r\n\r\n")[0], reply[:400]
    ok = await web.post(f"{gw.url}/v1/jobs", json=_job("z-2"), headers=bearer("acme"))
    assert ok.status_code == 201


async def test_a_request_that_cannot_be_parsed_is_a_json_400_quoting_none_of_it(
    gateway: Callable[..., Awaitable[RunningGateway]],
    web: httpx.AsyncClient,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiohttp answers a request it cannot parse itself, in text, quoting the offending line (and
    logs it with a traceback): a key in a malformed header, a read token in a malformed query went
    back in the answer and into the log. The gateway answers these as every error, in JSON, naming
    the problem and quoting nothing."""
    gw = await gateway()
    token = (await web.post(f"{gw.url}/v1/jobs", json=_job("q-1"), headers=bearer("acme"))).json()[
        "read_token"
    ]
    key = KEYS["acme"].encode()
    for request in (
        b"GET /v1/jobs/q-1 HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer %s\x01\r\n\r\n" % key,
        b"GET /v1/jobs/q-1/events?token=%s\x7f HTTP/1.1\r\nHost: h\r\n\r\n" % token.encode(),
        b"GET /v1/jobs/q-1/events?token=%s#\x00 HTTP/1.1\r\nHost: h\r\n\r\n" % token.encode(),
        b"GET http://[::1/?token=%s HTTP/1.1\r\nHost: h\r\n\r\n" % token.encode(),
        b"POST /v1/jobs HTTP/1.1\r\nHost: h\r\nX-Key: %s\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        % key,
    ):
        reply = await _exchange(gw, request)
        assert _status(reply) == 400, reply[:300]
        assert b"application/json" in reply.partition(b"\r\n\r\n")[0], reply[:300]
        error = msgspec.json.decode(_body(reply))["error"]
        assert error["code"] == "bad_request" and error["message"].startswith("not valid HTTP/1.1: ")
        assert key not in reply and token.encode() not in reply, reply
    out, err = capsys.readouterr()
    logged = out + err + caplog.text
    assert KEYS["acme"] not in logged and token not in logged
    assert (await web.get(f"{gw.url}/v1/jobs/q-1", headers=bearer("acme"))).status_code == 200


# ------------------------------------------------------------------------------------ resume ids


async def test_the_largest_stream_id_resumes_past_the_end_and_never_reads_as_redis_down(
    gateway: Callable[..., Awaitable[RunningGateway]], web: httpx.AsyncClient
) -> None:
    """``XRANGE key (<max id> +`` is an error in Redis (no id follows the largest): a resume from
    it is past every entry, like any id past the end, not 'Redis is unavailable' (which an
    EventSource would answer by reconnecting with the same id, forever)."""
    gw = await gateway(gateway_heartbeat_seconds=60.0)
    assert (await web.post(f"{gw.url}/v1/jobs", json=_job("mx-1"), headers=bearer("acme"))).status_code == 201
    url = f"{gw.url}/v1/jobs/mx-1/events"
    full = await read_sse(web, url, headers=bearer("acme"))
    assert full.types[-1] == "done"
    for how in ({"headers": {**bearer("acme"), "Last-Event-ID": MAX_ID}}, {"params": {"after": MAX_ID}}):
        kwargs: dict[str, Any] = {"headers": bearer("acme"), **how}
        rest = await read_sse(web, url, timeout=10, **kwargs)
        assert rest.status == 200 and rest.events == [], rest.comments
        assert rest.comments[-1].startswith("the job has ended; no event follows"), rest.comments


# ------------------------------------------------------------------------------------ job ids


@pytest.mark.parametrize("job_id", [".", ".."])
async def test_an_id_a_url_path_cannot_carry_is_refused_at_enqueue(
    gateway: Callable[..., Awaitable[RunningGateway]], web: httpx.AsyncClient, job_id: str
) -> None:
    """``/v1/jobs/./events`` and ``/v1/jobs/../events`` are dot segments: every client (and the
    gateway's own router) removes them, so a job with such an id could never be followed, read or
    cancelled. It is refused with a 422, not created unreachable."""
    gw = await gateway()
    posted = await web.post(f"{gw.url}/v1/jobs", json=_job(job_id), headers=bearer("acme"))
    assert posted.status_code == 422, posted.text
    assert posted.json()["error"]["code"] == "invalid_job" and "'.'" in posted.json()["error"]["message"]
    dotted = await web.post(f"{gw.url}/v1/jobs", json=_job("a.b..c"), headers=bearer("acme"))
    assert dotted.status_code == 201, "dots inside an id are fine"


# ------------------------------------------------------------------------------------ Redis stalled


async def test_a_redis_that_stops_answering_gets_a_prompt_503_not_a_hang(
    settings_for: Callable[..., Settings], web: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis frozen (SIGSTOP: connections stay open, nothing answers): without a deadline a request
    waited out the client's socket timeout and its retries, 40 s and more (a pooled connection's
    connect retried inside each command retry). Each request is answered 503 with Retry-After
    within the gateway's Redis deadline, and all is well again once Redis answers."""
    from worker.gateway import bounds

    monkeypatch.setattr(bounds, "REDIS_SECONDS", 0.5)
    with RedisServer() as server:
        gw = await start_gateway(
            settings_for(
                redis_url=server.url, tenants=tenants(), gateway_port=0, gateway_heartbeat_seconds=15.0
            )
        )
        assert server.process is not None
        pid = server.process.pid
        try:
            posted = await web.post(f"{gw.url}/v1/jobs", json=_job("s-1"), headers=bearer("acme"))
            assert posted.status_code == 201
            token = posted.json()["read_token"]
            os.kill(pid, signal.SIGSTOP)
            try:
                for method, path, kwargs in (
                    ("GET", "/v1/jobs/s-1", {"headers": bearer("acme")}),
                    ("GET", "/v1/jobs/s-1/events", {"params": {"token": token}}),
                    ("POST", "/v1/jobs", {"headers": bearer("acme"), "json": _job("s-2")}),
                    ("POST", "/v1/jobs/s-1/cancel", {"headers": bearer("acme")}),
                    ("GET", "/v1/jobs/s-1", {"headers": bearer("acme")}),  # after the pool's
                ):
                    started = time.monotonic()
                    try:
                        resp = await web.request(method, f"{gw.url}{path}", timeout=10.0, **kwargs)
                    except httpx.TimeoutException:
                        pytest.fail(f"{method} {path} with Redis stalled got no answer in 10 s")
                    assert resp.status_code == 503, (method, path, resp.text)
                    assert resp.headers["Retry-After"].isdigit()
                    assert resp.json()["error"]["code"] == "unavailable"
                    assert time.monotonic() - started < 5
            finally:
                os.kill(pid, signal.SIGCONT)
            async with asyncio.timeout(20):
                while (
                    again := await web.get(f"{gw.url}/v1/jobs/s-1", headers=bearer("acme"))
                ).status_code == 503:
                    await asyncio.sleep(0.05)  # polling the gateway's own answer until Redis is back
            # the cancel written while Redis was frozen may have run when it woke
            assert again.status_code == 200 and again.json()["state"] in ("queued", "cancelled")
        finally:
            await gw.shutdown()


# ------------------------------------------------------------------------------------ limits


async def test_posting_an_ended_job_again_at_the_tenants_limit_is_200_not_429(
    gateway: Callable[..., Awaitable[RunningGateway]], web: httpx.AsyncClient
) -> None:
    """A client whose answer to a POST was lost posts the same job again: 200 with the same answer,
    also once the job has ended and the tenant's slots are taken by others (the ended job left the
    in-flight count, so it was counted as a new job, and refused 429)."""
    gw = await gateway(tenants=tenants(acme={"max_inflight_jobs": 1}))
    first = await web.post(f"{gw.url}/v1/jobs", json=_job("l-1"), headers=bearer("acme"))
    assert first.status_code == 201
    assert (await read_sse(web, f"{gw.url}/v1/jobs/l-1/events", headers=bearer("acme"))).types[-1] == "done"
    slow = await web.post(f"{gw.url}/v1/jobs", json=_job("l-2", "m;tps=5;tokens=100"), headers=bearer("acme"))
    assert slow.status_code == 201, slow.text
    try:
        again = await web.post(f"{gw.url}/v1/jobs", json=_job("l-1"), headers=bearer("acme"))
        assert again.status_code == 200, again.text
        assert again.json() == first.json()
        other = await web.post(f"{gw.url}/v1/jobs", json=_job("l-3"), headers=bearer("acme"))
        assert other.status_code == 429, "a new job is still refused at the limit"
        changed = await web.post(
            f"{gw.url}/v1/jobs", json={**_job("l-1"), "input": "x"}, headers=bearer("acme")
        )
        assert changed.status_code in (409, 429), changed.text
    finally:
        await web.post(f"{gw.url}/v1/jobs/l-2/cancel", headers=bearer("acme"))


# ------------------------------------------------------------------------------------ slow readers


async def test_a_client_reading_nothing_of_a_long_replay_is_cut_not_answered_500(
    settings_for: Callable[..., Settings],
    redis: Any,
    prefix: str,
    web: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A client that asks for a long history and reads none of it: the replay's write timed out with
    a bare TimeoutError, which escaped the stream as a 'gateway request failed' error (a 500 answer
    attempted on a stream already begun) and left the connection open. It is cut, as a live stream's
    non-reader is, and nothing is logged as a failure."""
    import socket

    from worker.gateway import app
    from worker.keys import Keys

    monkeypatch.setattr(app, "WRITE_TIMEOUT", 0.5)
    gw = await start_gateway(settings_for(tenants=tenants(), gateway_port=0))
    sock = socket.socket()
    try:
        assert (
            await web.post(f"{gw.url}/v1/jobs", json=_job("h-1"), headers=bearer("acme"))
        ).status_code == 201
        pipe = redis.pipeline(transaction=False)
        token = b'{"type":"token","text":"' + b"x" * 2000 + b'"}'
        for i in range(3000):  # some 6 MB of history: more than the socket buffers hold
            pipe.xadd(Keys(prefix).events("acme/h-1"), {"event": token}, id=f"1-{i + 1}")
        await pipe.execute()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(_address(gw))
        sock.sendall(
            b"GET /v1/jobs/h-1/events HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer %s\r\n\r\n"
            % KEYS["acme"].encode()
        )
        async with asyncio.timeout(15):  # reading nothing meanwhile
            while not gw.gateway.streams.open:
                await asyncio.sleep(0.01)  # until the stream has begun
            while gw.gateway.streams.open:
                await asyncio.sleep(0.05)  # until the gateway has let it go
        sock.setblocking(False)
        closed = False
        async with asyncio.timeout(10):
            while not closed:
                try:
                    closed = sock.recv(1 << 20) == b""
                except BlockingIOError:
                    await asyncio.sleep(0.05)  # drained what was buffered; the end not yet seen
                except ConnectionResetError:
                    closed = True
        assert closed, "the server closed the connection"
        assert "gateway request failed" not in capsys.readouterr().out
        ok = await web.get(f"{gw.url}/v1/jobs/h-1", headers=bearer("acme"))
        assert ok.status_code == 200
    finally:
        sock.close()
        await gw.shutdown()
