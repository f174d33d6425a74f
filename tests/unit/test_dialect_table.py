"""The one table of dialects: every job api has an adapter, a provider URL setting and nothing else;
the logprobs memo (fakeredis) remembers per provider+model and never fails a job on Redis errors."""

from __future__ import annotations

from typing import get_args

import fakeredis
import msgspec
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from worker.capability import LOCAL_SECONDS, LogprobsMemo
from worker.jobs import API_NAMES, Api
from worker.keys import Keys
from worker.settings import Provider
from worker.upstream.adapters import DIALECTS, default_adapters

pytestmark = pytest.mark.unit


def test_every_api_has_an_adapter_and_a_url_setting() -> None:
    assert set(API_NAMES) == set(get_args(Api)) == set(DIALECTS)
    urls = {f.name.removesuffix("_url") for f in msgspec.structs.fields(Provider) if f.name.endswith("_url")}
    assert urls == set(API_NAMES)
    adapters = default_adapters()
    for api in API_NAMES:
        assert adapters[api].api == api
        provider = msgspec.convert({f"{api}_url": f"http://127.0.0.1:1/{api}"}, Provider)
        assert provider.url_for(api) == f"http://127.0.0.1:1/{api}"
    assert Provider().url_for("__class__") is None and Provider().url_for("not an api") is None


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_the_memo_is_shared_through_redis_and_expires() -> None:
    server = fakeredis.FakeServer()
    keys = Keys("t")
    clock_a, clock_b = _Clock(), _Clock()
    a = LogprobsMemo(fakeredis.FakeAsyncRedis(server=server), keys, 60.0, clock=clock_a)
    b = LogprobsMemo(fakeredis.FakeAsyncRedis(server=server), keys, 60.0, clock=clock_b)
    assert await b.refusal("p", "m{1}") is None
    await a.remember("p", "m{1}", "refused")
    assert await b.refusal("p", "m{1}") is None  # b trusts what it read for a few seconds
    clock_b.now += LOCAL_SECONDS + 0.1
    assert await b.refusal("p", "m{1}") == "refused"  # then reads what a wrote
    assert await b.refusal("p", "other") is None and await b.refusal("q", "m{1}") is None
    key = keys.no_logprobs("p", "m{1}")
    assert "{" not in key.removeprefix("t:nolp:p:")  # no hash tag from the model name
    ttl = await fakeredis.FakeAsyncRedis(server=server).pttl(key)
    assert 0 < ttl <= 60_000


async def test_a_redis_failure_never_fails_the_job() -> None:
    server = fakeredis.FakeServer()
    server.connected = False
    memo = LogprobsMemo(fakeredis.FakeAsyncRedis(server=server), Keys("t"), 60.0)
    await memo.remember("p", "m", "refused")  # logged, not raised
    assert await memo.refusal("p", "m") == "refused"  # kept locally
    other = LogprobsMemo(fakeredis.FakeAsyncRedis(server=server), Keys("t"), 60.0)
    assert await other.refusal("p", "m") is None
    with pytest.raises(RedisConnectionError):
        await fakeredis.FakeAsyncRedis(server=server).get("x")  # the server really is down
