"""``tokenwire demo``: a Redis it starts itself, the simulator, a worker and one job, live.

Everything it starts it stops. It uses a private ``redis-server`` on a free port when one is
installed, otherwise an in-process fakeredis server.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable, Iterator

from redis.asyncio import Redis

from .client import Client
from .connect import http_client, redis_client
from .events import Done
from .jobs import Job, Params
from .redisproc import RedisServer, redis_server_available
from .render import TerminalView
from .service import Worker
from .settings import Provider, Settings
from .supervise import cancel_and_wait
from .term import use_color

__all__ = ["DemoUnavailable", "run_demo"]


class DemoUnavailable(RuntimeError):
    """Neither redis-server nor fakeredis (the ``sim`` extra) is installed."""


RedisFactory = Callable[[float], Redis]


@contextlib.contextmanager
def _embedded_redis() -> Iterator[tuple[str, RedisFactory, str]]:
    """(url, client factory, description) of a Redis private to the demo."""
    if redis_server_available():
        with RedisServer() as server:
            url = server.url
            yield (
                url,
                lambda block: redis_client(url, block_seconds=block),
                f"redis-server on 127.0.0.1:{server.port} (private, stopped on exit)",
            )
        return
    try:
        import fakeredis
    except ImportError:
        raise DemoUnavailable(
            "the demo needs a Redis of its own: install redis-server (apt-get install redis-server), "
            "or the in-process fallback with `pip install 'tokenwire[sim]'`"
        ) from None

    fake = fakeredis.FakeServer()
    yield (
        "redis://fakeredis",
        lambda block: fakeredis.FakeAsyncRedis(server=fake),
        "in-process fakeredis (redis-server is not installed)",
    )


def _say(text: str) -> None:
    print(f"\x1b[2m· {text}\x1b[0m" if use_color(sys.stdout) else f"· {text}", flush=True)


async def run_demo(*, prompt: str, tps: float, seed: int, stop: asyncio.Event, grace: float = 2.0) -> int:
    from .sim import SimConfig, serve

    with _embedded_redis() as (redis_url, connect, redis_desc):
        _say(redis_desc)
        async with serve(SimConfig(seed=seed, tokens_per_second=tps)) as sim_url:
            _say(f"simulator (native protocol, {tps:g} tokens/s) at {sim_url}")
            settings = Settings(
                redis_url=redis_url,
                default_provider="sim",
                providers={"sim": Provider(native_url=f"{sim_url}/v1/inference/{{model}}")},
                concurrency=4,
                block_seconds=1.0,
                drain_grace_seconds=grace,
            )
            return await _run(settings, connect, prompt, stop)


async def _run(settings: Settings, connect: RedisFactory, prompt: str, stop: asyncio.Event) -> int:
    redis = connect(0.0)
    reader = connect(settings.block_seconds)
    client = Client(connect(2.0), prefix=settings.prefix)
    worker_stop = asyncio.Event()
    async with http_client(settings) as http:
        worker = Worker(settings, redis=redis, reader=reader, http=http, consumer="demo-worker")
        worker_task = asyncio.create_task(worker.run(worker_stop))
        try:
            async with asyncio.timeout(15):
                await worker.ready.wait()
            _say(f"worker {worker.consumer} reading {worker.keys.jobs} as group 'workers'")
            job = Job(model="tokenwire/sim-demo", input=prompt, params=Params(max_tokens=120))
            job_id = await client.enqueue(job)
            _say(f"enqueued job {job_id}: {prompt!r}")
            _say("tokens as they arrive, coloured by probability (green sure, red unsure):\n")
            ok = await _follow(client, job_id, stop)
        finally:
            worker_stop.set()
            if _forced():  # a second Ctrl-C already landed: no drain, whatever the grace says
                worker_task.cancel()
            try:
                await worker_task  # a second Ctrl-C while it drains cancels the worker through here
            finally:
                await client.aclose()
                await reader.aclose()
                await redis.aclose()
    _say("stopped the worker, the simulator and Redis")
    return 0 if ok or stop.is_set() else 1  # stopped by the user: a clean stop


async def _follow(client: Client, job_id: str, stop: asyncio.Event) -> bool:
    view = TerminalView(sys.stdout, color=use_color(sys.stdout))

    async def follow() -> bool:
        async for item in client.subscribe(job_id, timeout=120):
            if stop.is_set():  # belt and braces: 3.11's wait_for in redis-py's write lost cancels
                return False
            view.show(item.event)
            if isinstance(item.event, Done):
                return True
        return False

    task = asyncio.create_task(follow())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when a second Ctrl-C cancels this wait: neither task outlives it
        stopping.cancel()
        if not task.done():
            await cancel_and_wait(task)
    return not task.cancelled() and task.result()


def _forced() -> bool:
    """Whether this task has been cancelled: the CLI's forced stop (a second Ctrl-C)."""
    current = asyncio.current_task()
    return current is not None and current.cancelling() > 0
