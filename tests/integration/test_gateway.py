"""The gateway against a real redis-server, a worker and the simulator: every endpoint and contract
of issue 14 (status codes, SSE framing and resume, tenant isolation, limits, CORS, bad input)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import msgspec
import pytest
from redis.asyncio import Redis

from worker import Client
from worker.gateway.ids import scoped_id
from worker.keys import Keys, as_text

from .gatewaykit import (
    KEYS,
    ORIGIN_A,
    ORIGIN_B,
    RunningGateway,
    bearer,
    read_sse,
    tenants,
)

pytestmark = pytest.mark.integration

SLOW = "m;tps=40;tokens=30"  # a job that streams for about 0.75 s


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(20.0)) as c:
        yield c


def job(job_id: str | None = None, model: str = "m;tokens=8", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "input": "hello", **extra}
    if job_id is not None:
        body["id"] = job_id
    return body


async def post(
    http: httpx.AsyncClient, gw: RunningGateway, body: Any, tenant: str = "acme"
) -> httpx.Response:
    return await http.post(f"{gw.url}/v1/jobs", json=body, headers=bearer(tenant))


async def stored(redis: Redis, prefix: str, internal: str) -> list[tuple[str, bytes]]:
    items: Any = await redis.xrange(Keys(prefix).events(internal))
    return [(i.decode(), f[b"event"]) for i, f in items]


# ------------------------------------------------------------------------------------ enqueue


async def test_post_answers_201_then_200_with_the_same_body_and_409_for_another(
    gateway: Callable[..., Awaitable[RunningGateway]], http: httpx.AsyncClient, redis: Redis, prefix: str
) -> None:
    gw = await gateway()
    first = await post(http, gw, job("j-1"))
    assert first.status_code == 201, first.text
    answer = first.json()
    assert answer["id"] == "j-1" and answer["events_url"] == "/v1/jobs/j-1/events" and answer["read_token"]
    again = await post(http, gw, job("j-1"))
    assert again.status_code == 200 and again.json() == answer, "the same answer, token included"
    other = await post(http, gw, {**job("j-1"), "input": "other"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "conflict"
    state = await redis.hgetall(Keys(prefix).state(scoped_id("acme", "j-1")))
    assert state[b"tenant"] == b"acme", "the tenant is recorded on the job's state hash"
    no_id = await post(http, gw, job())
    assert no_id.status_code == 201 and len(no_id.json()["id"]) == 32


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        ({"model": "m"}, "invalid_job", "needs `input`"),
        ({"model": "m", "input": "x", "provider": "nope"}, "unknown_provider", "unknown provider 'nope'"),
        (
            {"model": "m", "input": "x", "params": {"max_tokens": 10**6}},
            "max_tokens_above_cap",
            "max_tokens_cap",
        ),
        ({"model": "m", "input": "x", "id": "a/b"}, "invalid_job", "no '/'"),
        ({"model": "m", "input": "x", "id": "x" * 125}, "invalid_job", "at most 121 characters"),
        ("not json at all", "invalid_job", "not valid JSON"),
    ],
)
async def test_an_invalid_job_is_422_with_the_workers_reason(
    gateway: Callable[..., Awaitable[RunningGateway]],
    http: httpx.AsyncClient,
    body: Any,
    code: str,
    words: str,
) -> None:
    gw = await gateway()
    if isinstance(body, str):
        resp = await http.post(f"{gw.url}/v1/jobs", content=body, headers=bearer("acme"))
    else:
        resp = await post(http, gw, body)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == code and words in error["message"]


async def test_unknown_or_missing_keys_are_401_and_tokens_cannot_enqueue(
    gateway: Callable[..., Awaitable[RunningGateway]], http: httpx.AsyncClient
) -> None:
    gw = await gateway()
    for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789"}, {"Authorization": "Basic abc"}):
        resp = await http.post(f"{gw.url}/v1/jobs", json=job("k"), headers=headers)
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized"
    token = (await post(http, gw, job("k2"))).json()["read_token"]
    resp = await http.post(f"{gw.url}/v1/jobs", json=job("k3"), params={"token": token})
    assert resp.status_code == 401, "a read token cannot enqueue"


async def test_max_inflight_jobs_is_counted_in_redis_across_gateways(
    gateway: Callable[..., Awaitable[RunningGateway]], http: httpx.AsyncClient, client: Client
) -> None:
    limited = tenants(acme={"max_inflight_jobs": 2})
    one = await gateway(tenants=limited)
    two = await gateway(tenants=limited)
    slow = "m;tps=5;tokens=50"
    assert (await post(http, one, job("f-1", slow))).status_code == 201
    assert (await post(http, two, job("f-2", slow))).status_code == 201
    over = await post(http, one, job("f-3", slow))
    assert over.status_code == 429 and over.headers["Retry-After"].isdigit()
    assert over.json()["error"]["code"] == "too_many_jobs"
    assert (await post(http, two, job("f-1", slow))).status_code == 200, (
        "re-posting a job in flight is no new job"
    )
    assert (await post(http, one, job("f-x", slow), tenant="bolt")).status_code == 201, "per tenant"
    await client.cancel(scoped_id("acme", "f-1"))
    async with asyncio.timeout(10):
        while (await post(http, two, job("f-3", slow))).status_code == 429:
            await asyncio.sleep(0.05)  # polling the gateway's own answer until the cancel lands


# ------------------------------------------------------------------------------------ events


async def test_events_are_the_stored_entries_exactly_then_the_stream_closes(
    gateway: Callable[..., Awaitable[RunningGateway]], http: httpx.AsyncClient, redis: Redis, prefix: str
) -> None:
    gw = await gateway()
    await post(http, gw, job("e-1", SLOW))
    sse = await read_sse(http, f"{gw.url}/v1/jobs/e-1/events", headers=bearer("acme"))
    assert sse.status == 200
    assert sse.headers["content-type"].startswith("text/event-stream")
    assert sse.headers["cache-control"] == "no-cache" and sse.headers["x-accel-buffering"] == "no"
    rows = await stored(redis, prefix, scoped_id("acme", "e-1"))
    assert [(i, d.encode()) for i, _, d in sse.events] == rows, "id = entry id, data = the stored JSON"
    assert sse.types == [msgspec.json.decode(d)["type"] for _, d in rows]
    assert sse.types[0] == "start" and sse.types[-1] == "done"
    again = await read_sse(http, f"{gw.url}/v1/jobs/e-1/events", headers=bearer("acme"))
    assert again.events == sse.events, "a finished job replays whole"


async def test_resume_after_last_event_id_or_after_gets_exactly_the_rest(
    gateway: Callable[..., Awaitable[RunningGateway]], http: httpx.AsyncClient, redis: Redis, prefix: str
) -> None:
    gw = await gateway()
    await post(http, gw, job("r-1", "m;tps=30;tokens=40"))
    url = f"{gw.url}/v1/jobs/r-1/events"
    first = await read_sse(http, url, headers=bearer("acme"), stop_after=7)  # killed mid-stream
    rest = await read_sse(http, url, headers={**bearer("acme"), "Last-Event-ID": first.ids[-1]})
    rows = await stored(redis, prefix, scoped_id("acme", "r-1"))
    assert first.ids + rest.ids == [i for i, _ in rows], "no gap, no duplicate"
    by_query = await read_sse(http, url, headers=bearer("acme"), params={"after": first.ids[2]})
    assert by_query.ids == [i for i, _ in rows][3:]
    both = await read_sse(
        http, url, headers={**bearer("acme"), "Last-Event-ID": first.ids[4]}, params={"after": first.ids[1]}
    )
    assert both.ids == [i for i, _ in rows][5:], "Last-Event-ID wins over after"
    assert rest.retry == "1000"


async def test_a_resume_id_past_a_finished_jobs_end_closes_at_once(
    gateway: Callable[..., Awaitable[RunningGateway]], http: httpx.AsyncClient
) -> None:
    gw = await gateway(gateway_heartbeat_seconds=60.0)
    await post(http, gw, job("p-1"))
    url = f"{gw.url}/v1/jobs/p-1/events"
    full = await read_sse(http, url, headers=bearer("acme"))
    for after in (full.ids[-1], "99999999999999-0"):  # its terminal id, an id of some other stream
        rest = await read_sse(http, url, headers={**bearer("acme"), "Last-Event-ID": after}, timeout=10)
        assert rest.events == [] and rest.comments[-1].startswith("the job has ended; no event follows")


@pytest.mark.parametrize(
    "bad", ["banana", "1-", "-1", "1-2-3", "99999999999999999999999-0", "$", "+", "1 -2", "0x1-0", "١-٠"]
)
async def test_a_resume_id_that_is_no_stream_id_is_400(
    gateway: Callable[..., Awaitable[RunningGateway]], http: httpx.AsyncClient, bad: str
) -> None:
    gw = await gateway()
    await post(http, gw, job("b-1"))
    url = f"{gw.url}/v1/jobs/b-1/events"
    by_query = await http.get(url, headers=bearer("acme"), params={"after": bad})
    assert by_query.status_code == 400 and by_query.json()["error"]["code"] == "bad_resume_id"
    if bad.isascii():
        by_header = await http.get(url, headers={**bearer("acme"), "Last-Event-ID": bad})
        assert by_header.status_code == 400 and "Last-Event-ID" in by_header.json()["error"]["message"]


async def test_never_enqueued_is_404_at_once_and_malformed_ids_are_404(
    gateway: Callable[..., Awaitable[RunningGateway]], http: httpx.AsyncClient
) -> None:
    gw = await gateway()
    for path in ("nope", "a%7Bb%7D", "x" * 200, "..%2F..%2Fetc", "tokenwire:job:%7Bx%7D", "%00", "a b"):
        for suffix in ("/events", "", "/cancel"):
            method = "POST" if suffix == "/cancel" else "GET"
            resp = await http.request(method, f"{gw.url}/v1/jobs/{path}{suffix}", headers=bearer("acme"))
            assert resp.status_code == 404, (path, suffix, resp.status_code)
            assert resp.json()["error"]["code"] == "not_found"


async def test_heartbeat_comments_while_a_job_is_silent(
    gateway: Callable[..., Awaitable[RunningGateway]], http: httpx.AsyncClient
) -> None:
    gw = await gateway(gateway_heartbeat_seconds=0.2)
    await post(http, gw, job("h-1", "m;tokens=3;fault=stall;after=1;stall=1.5"))
    sse = await read_sse(http, f"{gw.url}/v1/jobs/h-1/events", headers=bearer("acme"))
    assert sse.comments.count("keep-alive") >= 2, sse.comments
    assert sse.types[-1] in ("done", "error")


async def test_many_watchers_of_one_job_share_one_read(
    gateway: Callable[..., Awaitable[RunningGateway]], http: httpx.AsyncClient, redis: Redis, prefix: str
) -> None:
    gw = await gateway()
    await post(http, gw, job("w-1", "m;tps=20;tokens=20"))
    url = f"{gw.url}/v1/jobs/w-1/events"
    results = await asyncio.gather(*(read_sse(http, url, headers=bearer("acme")) for _ in range(20)))
    rows = [i for i, _ in await stored(redis, prefix, scoped_id("acme", "w-1"))]
    assert all(r.ids == rows for r in results)
    metrics = await _gateway_metrics(gw)
    # every watcher got every event, but the hub read each batch once for all (a few dozen reads,
    # where one blocking read per watcher would need 20 x 21)
    assert metrics["tokenwire_gateway_events_sent_total"] >= 20 * len(rows)
    assert metrics["tokenwire_gateway_redis_reads_total"] < 5 * len(rows)
    # a single server's reads go out on the kept connection, the reply raw from hiredis (a cluster's
    # are pipelined per node by redis-py's cluster client)
    assert gw.gateway.hub.xread.raw is (None if gw.settings.redis_cluster else True)


async def _xread_clients(redis: Redis) -> list[str]:
    """The ids of the connections whose last command was XREAD (the hub's: the worker reads its
    group with XREADGROUP, the gateway's other client replays with XRANGE)."""
    listing: Any = await redis.client_list()
    return [str(c["id"]) for c in listing if c.get("cmd") == "xread"]


async def test_the_hubs_read_connection_killed_mid_stream_is_replaced_without_a_gap(
    gateway: Callable[..., Awaitable[RunningGateway]], http: httpx.AsyncClient, redis: Redis, prefix: str
) -> None:
    gw = await gateway()
    await post(http, gw, job("kc-1", "m;tps=20;tokens=40"))
    some = asyncio.Event()
    reading = asyncio.create_task(
        read_sse(
            http,
            f"{gw.url}/v1/jobs/kc-1/events",
            headers=bearer("acme"),
            on_event=lambda sse: some.set() if len(sse.events) >= 5 else None,
        )
    )
    async with asyncio.timeout(10):
        await some.wait()
        while not (before := await _xread_clients(redis)):
            await asyncio.sleep(0.01)
    assert await redis.client_kill_filter(_id=before[0]) == 1
    sse = await reading
    rows = await stored(redis, prefix, scoped_id("acme", "kc-1"))
    assert sse.ids == [i for i, _ in rows] and sse.types[-1] == "done", "no gap, no duplicate"
    await post(http, gw, job("kc-2", "m;tps=20;tokens=10"))  # the hub reads on a new connection
    again = await read_sse(http, f"{gw.url}/v1/jobs/kc-2/events", headers=bearer("acme"))
    assert again.types[-1] == "done"
    assert before[0] not in await _xread_clients(redis)


async def _gateway_metrics(gw: RunningGateway) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    gateway = gw.gateway
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(gateway.metrics.render().decode()):
        for sample in family.samples:
            if not sample.labels:
                out[sample.name] = sample.value
            else:
                key = sample.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())) + "}"
                out[key] = sample.value
    return out


# ------------------------------------------------------------------------------------ tenants


async def test_tenant_b_cannot_see_as_job_by_key_or_token_and_its_own_id_is_its_own(
    gateway: Callable[..., Awaitable[RunningGateway]], http: httpx.AsyncClient, redis: Redis, prefix: str
) -> None:
    gw = await gateway()
    a = (await post(http, gw, job("shared", "m;tokens=4"))).json()
    await read_sse(http, f"{gw.url}/v1/jobs/shared/events", headers=bearer("acme"))
    for method, suffix in (("GET", "/events"), ("GET", ""), ("POST", "/cancel")):
        resp = await http.request(method, f"{gw.url}/v1/jobs/shared{suffix}", headers=bearer("bolt"))
        assert resp.status_code == 404
        assert resp.json()["error"]["message"] == "no job 'shared': never enqueued, or expired"
        unknown = await http.request(method, f"{gw.url}/v1/jobs/never{suffix}", headers=bearer("bolt"))
        assert unknown.json()["error"]["message"] == "no job 'never': never enqueued, or expired"
    b_own = await post(http, gw, job("shared", "m;tokens=6"), tenant="bolt")
    assert b_own.status_code == 201, "B posting A's id makes B's own job (with another body, even)"
    b_token = b_own.json()["read_token"]
    resp = await http.get(f"{gw.url}/v1/jobs/shared/events", params={"token": a["read_token"]}, headers={})
    assert resp.status_code == 200
    b_events = await read_sse(http, f"{gw.url}/v1/jobs/shared/events", params={"token": b_token})
    a_rows = await stored(redis, prefix, scoped_id("acme", "shared"))
    b_rows = await stored(redis, prefix, scoped_id("bolt", "shared"))
    assert [d.encode() for *_, d in b_events.events] == [d for _, d in b_rows] != [d for _, d in a_rows]
    # A's token names A's job: it reads nothing of B's, under any id
    forged = a["read_token"][:-2] + ("AA" if not a["read_token"].endswith("AA") else "BB")
    for token in (forged, "garbage", "a.b", "", "x" * 5000):
        bad = await http.get(f"{gw.url}/v1/jobs/shared/events", params={"token": token})
        assert bad.status_code == 401
    a_token_other_job = await http.get(f"{gw.url}/v1/jobs/other/events", params={"token": a["read_token"]})
    assert a_token_other_job.status_code == 404


async def test_unscoped_jobs_are_readable_only_by_a_read_unscoped_tenant(
    gateway: Callable[..., Awaitable[RunningGateway]], http: httpx.AsyncClient, client: Client
) -> None:
    gw = await gateway()
    job_id = await client.enqueue(model="m;tokens=3", input="hi", id="raw-1")
    await client.result(job_id, timeout=15)
    for tenant in ("acme", "bolt"):
        resp = await http.get(f"{gw.url}/v1/jobs/raw-1/events", headers=bearer(tenant))
        assert resp.status_code == 404
    sse = await read_sse(http, f"{gw.url}/v1/jobs/raw-1/events", headers=bearer("ops"))
    assert sse.types[-1] == "done"
    status = await http.get(f"{gw.url}/v1/jobs/raw-1", headers=bearer("ops"))
    assert status.status_code == 200 and status.json()["state"] == "done" and "tenant" not in status.json()
    # a read_unscoped tenant still cannot read another tenant's job through its internal id
    await post(http, gw, job("mine"))
    for path in ("acme/mine", "acme%2Fmine"):
        resp = await http.get(f"{gw.url}/v1/jobs/{path}", headers=bearer("ops"))
        assert resp.status_code == 404, path


async def test_status_and_cancel(
    gateway: Callable[..., Awaitable[RunningGateway]], http: httpx.AsyncClient
) -> None:
    gw = await gateway()
    token = (await post(http, gw, job("c-1", "m;tps=5;tokens=100"))).json()["read_token"]
    status = await http.get(f"{gw.url}/v1/jobs/c-1", params={"token": token})
    assert status.status_code == 200 and status.json()["state"] in ("queued", "running")
    cancel = await http.post(
        f"{gw.url}/v1/jobs/c-1/cancel", json={"reason": "user pressed stop"}, headers=bearer("acme")
    )
    assert cancel.status_code == 200 and cancel.json()["outcome"] in ("cancelled", "requested")
    sse = await read_sse(http, f"{gw.url}/v1/jobs/c-1/events", params={"token": token})
    assert sse.types[-1] == "cancelled" and "user pressed stop" in sse.events[-1][2]
    again = await http.post(f"{gw.url}/v1/jobs/c-1/cancel", headers=bearer("acme"))
    assert again.json()["outcome"] == "terminal"
    bad = await http.post(f"{gw.url}/v1/jobs/c-1/cancel", content=b"{nope", headers=bearer("acme"))
    assert bad.status_code == 422


PUBLIC_STATE = {
    "id",
    "events_url",
    "state",
    "attempt",
    "model",
    "created",
    "started",
    "finished",
    "tokens",
    "finish_reason",
    "confidence",
    "escalated_from",
    "error_code",
    "cancel_reason",
}


async def test_a_jobs_state_answers_its_public_fields_and_nothing_internal(
    gateway: Callable[..., Awaitable[RunningGateway]], http: httpx.AsyncClient, redis: Redis, prefix: str
) -> None:
    """Whatever the state hash holds (which worker runs the job, its queue entry, fencing ids,
    digests, a hand-back, the tenant), a key or token holder gets only the documented fields."""
    gw = await gateway()
    keys = Keys(prefix)
    done_token = (await post(http, gw, job("st-1"))).json()["read_token"]
    sse = await read_sse(http, f"{gw.url}/v1/jobs/st-1/events", params={"token": done_token})
    assert sse.types[-1] == "done"
    running = (await post(http, gw, job("st-2", "m;tps=5;tokens=100"))).json()["read_token"]
    async with asyncio.timeout(10):
        while await redis.hget(keys.state(scoped_id("acme", "st-2")), "owner") is None:
            await asyncio.sleep(0.02)  # until a worker owns it: `owner` (its host) is on the hash
    await redis.hset(
        keys.state(scoped_id("acme", "st-2")), mapping={"handback": "f" * 40, "future": "x" * 12}
    )
    await http.post(f"{gw.url}/v1/jobs/st-2/cancel", json={"reason": "stop it"}, headers=bearer("acme"))
    for public, token in (("st-1", done_token), ("st-2", running)):
        internal = scoped_id("acme", public)
        hidden = {
            as_text(k): as_text(v)
            for k, v in (await redis.hgetall(keys.state(internal))).items()
            if as_text(k) in ("owner", "entry", "terminal_id", "job_sha256", "handback", "tenant", "future")
        }
        assert {"owner", "entry", "job_sha256", "tenant"} <= set(hidden), hidden
        for how in ({"params": {"token": token}}, {"headers": bearer("acme")}):
            resp = await http.get(f"{gw.url}/v1/jobs/{public}", **how)
            assert resp.status_code == 200
            answer = resp.json()
            assert set(answer) == PUBLIC_STATE, set(answer) ^ PUBLIC_STATE
            for field, value in hidden.items():
                if field != "tenant":  # "acme" is no secret of acme's
                    assert value not in resp.text, f"{field} leaked"
    first = (await http.get(f"{gw.url}/v1/jobs/st-1", headers=bearer("acme"))).json()
    assert first["state"] == "done" and first["attempt"] == 1 and first["finish_reason"]
    assert first["created"] <= first["started"] <= first["finished"] and first["tokens"] == sse.types.count(
        "token"
    )
    assert first["error_code"] is None and first["cancel_reason"] is None
    second = (await http.get(f"{gw.url}/v1/jobs/st-2", headers=bearer("acme"))).json()
    assert second["cancel_reason"] == "stop it" and second["state"] in ("running", "cancelled")


async def test_max_streams_per_process(
    gateway: Callable[..., Awaitable[RunningGateway]], http: httpx.AsyncClient
) -> None:
    gw = await gateway(tenants=tenants(acme={"max_streams": 2}))
    await post(http, gw, job("s-1", "m;tps=10;tokens=30"))
    url = f"{gw.url}/v1/jobs/s-1/events"
    opened = asyncio.Event()
    held: list[Any] = []

    async def hold() -> None:
        async with http.stream("GET", url, headers=bearer("acme")) as resp:
            held.append(resp)
            if len(held) == 2:
                opened.set()
            async for _ in resp.aiter_bytes():
                pass

    tasks = [asyncio.create_task(hold()) for _ in range(2)]
    async with asyncio.timeout(10):
        await opened.wait()
    third = await http.get(url, headers=bearer("acme"))
    assert third.status_code == 429 and third.headers["Retry-After"] == "1"
    assert third.json()["error"]["code"] == "too_many_streams"
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# ------------------------------------------------------------------------------------ CORS


async def test_cors_preflight_answers_the_union_and_real_requests_their_tenants_origins(
    gateway: Callable[..., Awaitable[RunningGateway]], http: httpx.AsyncClient
) -> None:
    gw = await gateway()
    for origin in (ORIGIN_A, ORIGIN_B):
        pre = await http.options(
            f"{gw.url}/v1/jobs",
            headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization,content-type"},
        )  # fmt: skip
        assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == origin
        assert "Authorization" in pre.headers["access-control-allow-headers"]
    evil = await http.options(
        f"{gw.url}/v1/jobs",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert evil.status_code == 403 and "access-control-allow-origin" not in evil.headers
    ok = await http.post(f"{gw.url}/v1/jobs", json=job("o-1"), headers={**bearer("acme"), "Origin": ORIGIN_A})
    assert ok.status_code == 201 and ok.headers["access-control-allow-origin"] == ORIGIN_A
    wrong = await http.post(
        f"{gw.url}/v1/jobs", json=job("o-2"), headers={**bearer("acme"), "Origin": ORIGIN_B}
    )
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "origin_not_allowed"
    token = ok.json()["read_token"]
    stream = await read_sse(
        http, f"{gw.url}/v1/jobs/o-1/events", params={"token": token}, headers={"Origin": ORIGIN_A}
    )
    assert stream.headers["access-control-allow-origin"] == ORIGIN_A and stream.types[-1] == "done"
    host = gw.url.removeprefix("http://")
    same = await http.post(
        f"{gw.url}/v1/jobs", json=job("o-3"), headers={**bearer("acme"), "Origin": f"http://{host}"}
    )
    assert same.status_code == 201, "the gateway's own origin (its page) is always allowed"


# ------------------------------------------------------------------------------------ bad input


async def test_huge_headers_and_bodies_get_clear_statuses_and_others_are_unaffected(
    gateway: Callable[..., Awaitable[RunningGateway]], http: httpx.AsyncClient
) -> None:
    gw = await gateway(max_payload_bytes=65_536)
    await post(http, gw, job("x-1", "m;tps=20;tokens=30"))
    watcher = asyncio.create_task(read_sse(http, f"{gw.url}/v1/jobs/x-1/events", headers=bearer("acme")))
    big = await http.post(f"{gw.url}/v1/jobs", content=b"{" + b" " * 200_000 + b"}", headers=bearer("acme"))
    assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    for head in (
        b"GET /v1/jobs/x HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
        b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /v1/jobs/x HTTP/1.1\r\nHost: h\r\n"
        + b"".join(b"X-%d: 1\r\n" % i for i in range(500))
        + b"\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS hello on plain HTTP
    ):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(head)
        await writer.drain()
        async with asyncio.timeout(10):
            reply = await reader.read(4096)
        writer.close()
        status = int(reply.split(b" ", 2)[1])
        assert status in (400, 413, 414, 431), reply[:200]
    long_key = await http.get(f"{gw.url}/v1/jobs/x-1", headers={"Authorization": "Bearer " + "k" * 5000})
    assert long_key.status_code == 401
    got = await watcher
    assert got.types[-1] == "done" and got.types[0] == "start"


async def test_slow_request_heads_are_cut_and_do_not_hold_the_server(
    gateway: Callable[..., Awaitable[RunningGateway]],
    http: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.gateway import server

    monkeypatch.setattr(server, "HEAD_TIMEOUT", 0.5)
    gw = await gateway()
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    clients = []
    for _ in range(20):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /v1/jobs/x HTTP/1.1\r\nHost: h\r\nX-Slow: ")  # never finished
        clients.append((reader, writer))
    silent = [await asyncio.open_connection(host, int(port)) for _ in range(5)]  # send nothing
    async with asyncio.timeout(10):
        for reader, _ in [*clients, *silent]:
            assert await reader.read() == b"", "the server closed it"
    ok = await post(http, gw, job("sl-1"))
    assert ok.status_code == 201
    for _, writer in [*clients, *silent]:
        writer.close()


async def test_a_client_that_stops_reading_is_dropped_and_resumes_by_id(
    gateway: Callable[..., Awaitable[RunningGateway]], http: httpx.AsyncClient, redis: Redis, prefix: str
) -> None:
    gw = await gateway(gateway_buffer_bytes=65_536)
    # one token, a pause in which the client below attaches live, then 10,000 tokens flat out (some
    # 4 MB: more than the socket buffers of a client reading nothing can hold)
    slow = "m;tps=0;tokens=10000;fault=stall;after=1;stall=1.0"
    await post(http, gw, job("d-1", slow, params={"max_tokens": 10000}))
    url = f"{gw.url}/v1/jobs/d-1/events"
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    # a raw client with a tiny receive window that reads nothing until the job is over
    import socket

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(
        f"GET /v1/jobs/d-1/events HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {KEYS['acme']}\r\n\r\n".encode(
            "ascii"
        )
    )
    healthy = await read_sse(http, url, headers=bearer("acme"))
    assert healthy.types[-1] == "done", "a slow client never slows another"
    sock.setblocking(True)
    sock.settimeout(10)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    sock.close()
    body = data.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in data else b""
    from .gatewaykit import Sse, parse_sse

    got = Sse(200, httpx.Headers())
    parse_sse(_dechunk(body), got)
    assert b"event: done" not in body, "it was dropped before the end"
    metrics = await _gateway_metrics(gw)
    assert metrics.get("tokenwire_gateway_dropped_streams_total{reason=behind}", 0) >= 1
    last = got.ids[-1] if got.ids else "0-0"
    rest = await read_sse(http, url, headers={**bearer("acme"), "Last-Event-ID": last})
    rows = [i for i, _ in await stored(redis, prefix, scoped_id("acme", "d-1"))]
    assert got.ids + rest.ids == rows, "resumed by id: exactly the rest"


def _dechunk(body: bytes) -> str:
    """The payload of an HTTP/1.1 chunked body, as text (may end mid-chunk). Chunk sizes count
    bytes, so it is cut as bytes and decoded after (a token's text may be any code point)."""
    out, rest = [], body
    while rest:
        size_line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            break
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2 :]
    return b"".join(out).decode("utf-8", "replace")


async def test_metrics_count_streams_events_resumes_failures(
    gateway: Callable[..., Awaitable[RunningGateway]], http: httpx.AsyncClient
) -> None:
    gw = await gateway()
    await post(http, gw, job("m-1", "m;tokens=5"))
    full = await read_sse(http, f"{gw.url}/v1/jobs/m-1/events", headers=bearer("acme"))
    await read_sse(
        http, f"{gw.url}/v1/jobs/m-1/events", headers={**bearer("acme"), "Last-Event-ID": full.ids[2]}
    )
    await http.get(f"{gw.url}/v1/jobs/m-1", headers={"Authorization": "Bearer nope-nope-nope"})
    await http.get(f"{gw.url}/v1/jobs/m-1/events", params={"token": "nope"})
    m = await _gateway_metrics(gw)
    assert m["tokenwire_gateway_events_sent_total"] == len(full.ids) + len(full.ids) - 3
    assert m["tokenwire_gateway_resumes_total"] == 1
    assert m["tokenwire_gateway_auth_failures_total{kind=key}"] == 1
    assert m["tokenwire_gateway_auth_failures_total{kind=token}"] == 1
    assert m["tokenwire_gateway_open_streams"] == 0


def test_key_sha256_is_what_tenants_configure() -> None:
    assert hashlib.sha256(KEYS["acme"].encode()).hexdigest() == tenants()["acme"].key_sha256


async def test_metrics_healthz_and_readyz_are_served_as_the_workers_are(
    gateway: Callable[..., Awaitable[RunningGateway]], http: httpx.AsyncClient
) -> None:
    from worker.redisproc import free_port

    port = free_port()
    gw = await gateway(metrics_port=port)
    await post(http, gw, job("mx-1", "m;tokens=3"))
    await read_sse(http, f"{gw.url}/v1/jobs/mx-1/events", headers=bearer("acme"))
    base = f"http://127.0.0.1:{port}"
    text = (await http.get(f"{base}/metrics")).text
    for name in (
        "tokenwire_gateway_open_streams",
        "tokenwire_gateway_events_sent_total",
        "tokenwire_gateway_resumes_total",
        "tokenwire_gateway_auth_failures_total",
        "tokenwire_gateway_dropped_streams_total",
        "tokenwire_gateway_redis_reads_total",
    ):
        assert name in text, name
    assert (await http.get(f"{base}/healthz")).status_code == 200
    assert (await http.get(f"{base}/readyz")).text == "ready\n"
    assert (await http.get(f"{gw.url}/metrics")).status_code == 404, "not on the public port"
