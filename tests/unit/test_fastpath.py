"""The fast paths' probes: they find the locked libraries' internals, report a fallback with its
reason when one moves, the hot path then takes the public API and gives the same results, and no
module outside worker/fastpath/ touches another library's private names.

Every test is a coroutine, even where nothing is awaited: with looptime 0.9's plugin, a synchronous
test leaves an event loop behind, and its collection fails whichever later test it lands in.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import fakeredis
import httpx
import httpx_aiohttp.transport as aiohttp_transport
import pytest
import redis._parsers.hiredis as redis_hiredis
import structlog
from redis.asyncio import Redis

from worker import Client, Done, Job, Provider, Settings, Worker
from worker.fastpath import Probe
from worker.fastpath import httpx_aiohttp as fp_aiohttp
from worker.fastpath import redis_py as fp_redis
from worker.fastpath.startup import COMPONENTS, probe_all, report
from worker.metrics import Metrics

WORKER = Path(__file__).resolve().parents[2] / "worker"
FASTPATH = WORKER / "fastpath"
BOUND = 30.0

PRIVATE = {
    "httpx-aiohttp's unexported names": (
        r"httpx_aiohttp\.transport|\bAiohttpResponseStream\b|\bmap_aiohttp_exceptions\b|\b_aiohttp_response\b"
    ),
    "httpx's private stream wrapper": (
        r"\bhttpx\._|\bBoundAsyncStream\b|\.stream\._stream\b|[\"']_stream[\"']"
    ),
    "redis-py's parser internals": (
        r"\._parser\b|[\"']_parser[\"']|[\"']_reader[\"']|\bredis\._parsers\b|\b_AsyncHiredisParser\b"
        r"|\bNOT_ENOUGH_DATA\b|\bread_from_socket\b|\bhandle_push_response\b"
    ),
}
"""What another library keeps to itself, as it may appear in source (attribute, import, getattr)."""


def gauges(metrics: Metrics) -> dict[str, float | None]:
    return {c: metrics.registry.get_sample_value("tokenwire_fast_path", {"component": c}) for c in COMPONENTS}


@pytest.fixture(autouse=True)
def _probed_again(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every probe remembers its answer: after a test that moved an internal, put it back and
    probe again, so the next test (in this process) finds the fast paths."""
    yield
    monkeypatch.undo()
    for module in (fp_aiohttp, fp_redis):
        assert module.probe().available


# --------------------------------------------------------------------------- private names stay here


def _sources() -> list[Path]:
    return sorted(p for p in WORKER.rglob("*.py") if FASTPATH not in p.parents)


async def test_no_module_outside_fastpath_touches_private_names() -> None:
    found = [
        f"{path.relative_to(WORKER.parent)}:{number}: {what}: {line.strip()}"
        for path in _sources()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        for what, pattern in PRIVATE.items()
        if re.search(pattern, line)
    ]
    assert not found, "private names of other libraries outside worker/fastpath/:\n" + "\n".join(found)


async def test_the_private_name_patterns_match_what_fastpath_uses() -> None:
    """The check above cannot pass vacuously: every pattern finds its names in worker/fastpath/."""
    text = "\n".join(p.read_text() for p in FASTPATH.glob("*.py"))
    for what, pattern in PRIVATE.items():
        assert re.search(pattern, text), what
    assert _sources() and all(FASTPATH not in p.parents for p in _sources())


async def test_import_worker_survives_every_internal_moving() -> None:
    """Private modules gone (as after a rename) and unexported names deleted: ``import worker``
    and the hot path's modules still import, and every probe reports its fallback."""
    code = """
import httpx_aiohttp.transport, redis.asyncio, sys
sys.modules["redis._parsers.hiredis"] = None
del httpx_aiohttp.transport.AiohttpResponseStream, httpx_aiohttp.transport.map_aiohttp_exceptions
import worker, worker.service, worker.publisher, worker.upstream.http
from worker.fastpath import httpx_aiohttp, redis_py
for module in (httpx_aiohttp, redis_py):
    probe = module.probe()
    assert not probe.available, probe
    print(probe.component, probe.reason)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "aiohttp httpx_aiohttp.transport.AiohttpResponseStream is missing or not an httpx.AsyncByteStream",
        "redis_reply cannot import redis._parsers.hiredis "
        "(import of redis._parsers.hiredis halted; None in sys.modules)",
    ]


# --------------------------------------------------------------------------- probes


async def test_every_probe_finds_its_fast_path_with_the_locked_versions() -> None:
    probes = [fp_aiohttp.probe(), fp_redis.probe()]
    assert [p.component for p in probes] == list(COMPONENTS) == ["aiohttp", "redis_reply"]
    assert all(p.available and p.path == "fast" for p in probes), probes


class _ForgetfulStream(httpx.AsyncByteStream):
    def __init__(self, response: object) -> None:
        self._response = response


class _OtherBound(httpx.AsyncByteStream):
    def __init__(self, stream: object, response: object, start: float) -> None:
        self._inner = stream


@contextlib.contextmanager
def _other_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        raise RuntimeError("not httpx's") from exc


async def _coroutine(*_: object) -> None:
    return None


def _not_a_coroutine(*_: object) -> None:
    return None


def _raises(*_: object) -> None:
    raise AttributeError("'NoneType' object has no attribute 'encoder'")


HTTPX_CLIENT = sys.modules["httpx._client"]
PARSER = redis_hiredis._AsyncHiredisParser


@pytest.mark.parametrize(
    ("module", "target", "name", "value", "says"),
    [
        (fp_aiohttp, aiohttp_transport, "AiohttpResponseStream", None, "AiohttpResponseStream is missing"),
        (fp_aiohttp, aiohttp_transport, "AiohttpResponseStream", _ForgetfulStream, "no longer keeps"),
        (fp_aiohttp, aiohttp_transport, "map_aiohttp_exceptions", None, "map_aiohttp_exceptions is missing"),
        (fp_aiohttp, aiohttp_transport, "map_aiohttp_exceptions", _other_errors, "into RuntimeError"),
        (fp_aiohttp, HTTPX_CLIENT, "BoundAsyncStream", None, "BoundAsyncStream is missing"),
        (fp_aiohttp, HTTPX_CLIENT, "BoundAsyncStream", _OtherBound, "as _stream"),
        (fp_aiohttp, sys.modules, "httpx_aiohttp.transport", ..., "cannot import httpx_aiohttp.transport"),
        (fp_redis, redis_hiredis, "_AsyncHiredisParser", None, "_AsyncHiredisParser is missing"),
        (fp_redis, redis_hiredis, "NOT_ENOUGH_DATA", None, "NOT_ENOUGH_DATA is missing"),
        (fp_redis, PARSER, "read_from_socket", _not_a_coroutine, "read_from_socket is missing or not a"),
        (fp_redis, PARSER, "handle_push_response", _not_a_coroutine, "handle_push_response is missing"),
        (fp_redis, PARSER, "on_connect", _raises, "fails the self-test: AttributeError"),
        (fp_redis, sys.modules, "redis._parsers.hiredis", ..., "cannot import redis._parsers.hiredis"),
    ],
)
async def test_a_moved_internal_makes_the_probe_report_the_fallback_and_why(
    monkeypatch: pytest.MonkeyPatch, module: Any, target: Any, name: str, value: Any, says: str
) -> None:
    if target is sys.modules:  # the private module is gone (renamed, say)
        monkeypatch.setitem(sys.modules, name, None)
    elif value is None:  # the name is gone
        monkeypatch.delattr(target, name)
    else:  # the name is there with another shape
        monkeypatch.setattr(target, name, value)
    probe = module.probe()
    assert isinstance(probe, Probe) and not probe.available and probe.path == "fallback"
    assert says in probe.reason, probe.reason
    assert probe.component == module.COMPONENT


async def test_a_moved_internal_turns_every_hot_path_accessor_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a probe found nothing, the accessors answer ``None`` whatever they are given."""
    for name in ("httpx_aiohttp.transport", "redis._parsers.hiredis"):
        monkeypatch.setitem(sys.modules, name, None)
    for module in (fp_aiohttp, fp_redis):
        assert not module.probe().available
    assert fp_aiohttp.aiohttp_content(httpx.Response(200)) is None
    assert isinstance(fp_aiohttp.aiohttp_errors(), contextlib.nullcontext)


async def test_probe_client_says_which_clients_get_the_bulk_reader() -> None:
    from worker.connect import redis_client

    stock, other = redis_client("redis://127.0.0.1:1/0"), fakeredis.FakeAsyncRedis()
    assert fp_redis.probe_client(stock).available  # no connection is made
    fake = fp_redis.probe_client(other)
    await stock.aclose()
    await other.aclose()
    assert not fake.available and "have their own read_response" in fake.reason
    cluster = fp_redis.probe_client(cast(Redis, types.SimpleNamespace()))  # a cluster client has no pool
    assert not cluster.available and "Redis Cluster" in cluster.reason


async def test_startup_sets_the_gauge_and_logs_every_component_once() -> None:
    metrics = Metrics()
    gauge = metrics.fast_path
    fake = fakeredis.FakeAsyncRedis()
    probes = probe_all(upstream_transport="httpx", redis=fake)
    await fake.aclose()
    with structlog.testing.capture_logs() as logs:
        report(probes, gauge)
    assert gauges(metrics) == {"aiohttp": 0.0, "redis_reply": 0.0}
    (line,) = logs
    assert line["log_level"] == "warning" and line["fallback"] == ["aiohttp", "redis_reply"]
    assert line["aiohttp"] == "fallback: upstream_transport is 'httpx': bodies are read through httpx"
    assert line["redis_reply"].startswith("fallback: the client's connections (FakeAsyncRedisConnection)")


# --------------------------------------------------------------------------- a whole worker on the fallbacks


NATIVE = b"".join(
    b"data: %b\n\n" % line
    for line in (
        b'{"token":{"id":1,"text":"Hel","logprob":-0.1,"special":false},"generated_text":null,"details":null}',
        b'{"token":{"id":2,"text":"lo","logprob":-0.2,"special":false},"generated_text":null,"details":null}',
        b'{"token":{"id":3,"text":"</s>","logprob":-0.01,"special":true},"generated_text":"Hello",'
        b'"details":{"finish_reason":"eos_token","generated_tokens":3,"input_tokens":1,"seed":null}}',
    )
)


async def test_a_worker_whose_internals_moved_completes_a_job_on_the_fallbacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """fakeredis (no hiredis reader) and httpx's transport: every component on its fallback, the
    gauge reads 0 for each, the log line says why, the job is done."""

    async def upstream(request: httpx.Request) -> httpx.Response:
        chunks = [NATIVE[i : i + 7] for i in range(0, len(NATIVE), 7)]  # events split across reads
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=_aiter(chunks))

    server = fakeredis.FakeServer()
    settings = Settings(
        redis_url="redis://fakeredis",
        prefix="fp",
        default_provider="up",
        providers={"up": Provider(native_url="http://upstream.test/v1/inference/{model}")},
        upstream_transport="httpx",
        block_seconds=0.1,
        drain_grace_seconds=1.0,
    )
    http = httpx.AsyncClient(transport=httpx.MockTransport(upstream))
    worker = Worker(
        settings,
        redis=fakeredis.FakeAsyncRedis(server=server),
        reader=fakeredis.FakeAsyncRedis(server=server),
        http=http,
    )
    client = Client(fakeredis.FakeAsyncRedis(server=server), prefix="fp")
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(worker.run(stop))
        try:
            async with asyncio.timeout(BOUND):
                await worker.ready.wait()
                done = await client.result(await client.enqueue(Job(model="m", input="hi")), timeout=BOUND)
        finally:
            stop.set()
            async with asyncio.timeout(BOUND):
                await task
            await client.aclose()
            await http.aclose()
    assert isinstance(done, Done) and done.text == "Hello" and done.usage.output_tokens == 3
    assert gauges(worker.metrics) == {"aiohttp": 0.0, "redis_reply": 0.0}
    (line,) = [entry for entry in logs if "fallback" in entry]
    assert line["fallback"] == ["aiohttp", "redis_reply"]
    assert line["aiohttp"] == "fallback: upstream_transport is 'httpx': bodies are read through httpx"


async def _aiter(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
