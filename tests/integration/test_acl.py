"""Least privilege on a real redis-server with ACLs: each role of :mod:`worker.roles` does its whole
job as a user made from the table and nothing beyond it, every grant of the table is needed (drop
any one: some operation of that role fails), and a worker whose user lacks one stops at start-up
with a line naming the command and key."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import msgspec
import pytest
import redis as sync_redis
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, RedisClusterException, ResponseError
from structlog.testing import capture_logs

from worker import Client, Done, Worker
from worker.admit import Admitted, admit
from worker.capability import LogprobsMemo
from worker.client import JobNotFound
from worker.confidence import ConfidenceTracker
from worker.connect import http_client, redis_client
from worker.dead import list_dead, purge_dead, redrive
from worker.events import Start, Usage, Verdict
from worker.feedback import FeedbackError, read_feedback
from worker.jobs import Job, encode_job
from worker.keys import Keys, as_text
from worker.lease import LeaseKeeper
from worker.queue import JobQueue, NotPermitted
from worker.ratelimit import Budgets
from worker.redisproc import RedisClusterServers, RedisServer
from worker.review import ReviewItem, ReviewQueue
from worker.roles import ROLES, acl_rules
from worker.settings import Provider, Settings
from worker.signals import Signals, encode_signals
from worker.stats import collect_stats
from worker.store import JobStore

from .conftest import RunningWorker

pytestmark = pytest.mark.integration

ADMIN = "admin-secret"
MODEL = "tokenwire/sim;tokens=4"


@pytest.fixture(scope="module")
def acl_server() -> Iterator[RedisServer]:
    """A private redis-server whose default user needs a password (the tests' admin)."""
    with RedisServer(password=ADMIN) as server:
        yield server


@pytest.fixture
def redis_url(acl_server: RedisServer) -> str:  # the integration fixtures' Redis: this one, as admin
    return acl_server.url


class Users:
    def __init__(self, *servers: RedisServer) -> None:
        self.server = servers[0]
        self.admins = [sync_redis.Redis.from_url(server.url) for server in servers]

    def make(self, rules: list[str]) -> str:
        """A new user with exactly ``rules`` (on every node of a cluster); its URL."""
        name, password = f"u-{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
        setuser = ("ACL", "SETUSER", name, "reset", "on", f">{password}", *rules)
        for admin in self.admins:
            admin.execute_command(*setuser)  # type: ignore[no-untyped-call]
        return f"redis://{name}:{password}@127.0.0.1:{self.server.port}/0"

    def close(self) -> None:
        for admin in self.admins:
            admin.close()

    def role(self, role: str, prefix: str) -> str:
        return self.make(acl_rules(role, prefix=prefix))


@pytest.fixture
def users(acl_server: RedisServer) -> Iterator[Users]:
    made = Users(acl_server)
    yield made
    made.close()


def refused(exc: BaseException) -> bool:
    """Redis refused it for want of a permission (a script's inner command is refused as a plain
    ERR naming the script, not as NOPERM)."""
    return isinstance(exc, NoPermissionError) or (
        isinstance(exc, ResponseError) and "user executing the script can't" in str(exc)
    )


def job_payload(job_id: str) -> bytes:
    return msgspec.json.encode({"id": job_id, "model": MODEL, "input": "x"})


async def health_check(r: Redis) -> None:
    """What redis-py's pool does with a connection idle past health_check_interval: PING."""
    pool = getattr(r, "connection_pool", None)
    if pool is None:  # a cluster client: it runs no health checks
        return
    conn = await pool.get_connection()
    try:
        conn.next_health_check = -1
        await conn.check_health()
    finally:
        await pool.release(conn)


def done_event(job_id: str, attempt: int) -> Done:
    return Done(
        job_id=job_id,
        attempt=attempt,
        finish_reason="stop",
        text="hi",
        usage=Usage(),
        confidence=None,
        summary=ConfidenceTracker().finish(),
    )


# -- every operation of each role, run as a user ------------------------------------------------


async def worker_operations(r: Redis, admin: Redis, prefix: str) -> None:
    """Everything a worker sends: group, read, begin, lease, events, finish, ack, fail, dead
    letter, takeover, hand-back, reap, stats, cancel listener, health check."""
    keys = Keys(prefix)
    queue = JobQueue(r, r, keys, "c1", dead_maxlen=100, check_permissions=False)
    store = JobStore(r, keys)
    await admin.script_flush()  # every script is loaded by this user's first call
    producer = Client(admin, prefix=prefix)
    for job_id in ("a", "b"):
        await producer.enqueue(id=job_id, model=MODEL, input="x")

    await queue.ensure_group()
    got = await queue.read(10, 100)
    assert len(got) == 2
    a, b = got
    begun = await store.begin(
        "a", a.entry_id, "c1", Start(job_id="a", attempt=0, model=MODEL, provider="sim", api="native")
    )
    assert begun.outcome == "started"
    leases = LeaseKeeper(r, keys, "c1", 30.0)
    leases.hold(a.entry_id, lambda: None)
    with capture_logs() as logs:  # the keeper logs a failed renewal and tries again later
        assert await leases.renew_once() == []
    for failed in [e["error"] for e in logs if e["event"] == "lease renewal failed"]:
        raise ResponseError(failed)  # what Redis answered
    # after a lost reply, the publisher reads back the id Redis refused (Publisher._already_written)
    assert await r.xrange(keys.events("a"), "1-0", "1-0", count=1)
    assert await store.finish("a", begun.attempt, 1, done_event("a", begun.attempt), {}) == "ok"
    await queue.ack(a.entry_id)
    assert await store.fail("b", b.entry_id, "invalid_job", "no", {}) == "ok"
    await queue.dead_letter(b.entry_id, b.payload, "no", job_id="b", code="invalid_job")

    await producer.enqueue(id="c", model=MODEL, input="x")
    await admin.xreadgroup("workers", "ghost", {keys.jobs: ">"}, count=1)  # a worker that died
    claimed, _ = await queue.reclaim(10, 0)
    assert [d.deliveries for d in claimed] == [2]
    replaces = await store.hand_back("c", claimed[0].entry_id)  # as a drain does
    await queue.hand_back(claimed[0], replaces)
    assert await queue.reap(0) == ["ghost"]
    stats = await collect_stats(r, prefix)
    assert stats["group_exists"] and stats["dead_letters"] == 1
    async with r.pubsub() as pubsub:  # the cancel listener
        await pubsub.subscribe(keys.cancel)
        assert (await pubsub.get_message(timeout=5.0) or {}).get("type") == "subscribe"
    await budget_operations(r, prefix)
    # the logprobs memo (worker.capability): it logs a refused command and goes on, so its two
    # commands are sent here as it sends them, then it is read back through the memo itself
    memo_key = keys.no_logprobs("sim", MODEL)
    await r.set(memo_key, "refused", px=60_000)
    assert await r.get(memo_key) == b"refused"
    memo = LogprobsMemo(r, keys, 60.0, clock=iter(range(0, 10**6, 100)).__next__)  # no local hits
    await memo.remember("sim", MODEL, "refused again")
    assert await memo.refusal("sim", MODEL) == "refused again"
    no_n = keys.no_n("sim", MODEL)  # a provider ignoring chat's `n` (worker.candidates), alike
    await r.set(no_n, "only choice 0", px=60_000)
    assert await r.get(no_n) == b"only choice 0"
    await memo.remember_ignores_n("sim", MODEL, "only choice 0 again")
    assert await memo.ignores_n("sim", MODEL) == "only choice 0 again"
    await review_add_operations(r, admin, prefix)
    await health_check(r)


def review_done(job_id: str, attempt: int) -> Done:
    verdict = Verdict(decision="review", reasons=["1 low segment"], n_low=1, n_medium=0)
    return msgspec.structs.replace(done_event(job_id, attempt), verdict=verdict)


async def review_add_operations(r: Redis, admin: Redis, prefix: str) -> None:
    """The worker's side of the review stream: a job whose done says review is put on it (from its
    events, as after a takeover), once."""
    keys = Keys(prefix)
    store = JobStore(admin, keys)
    await store.create("rv", MODEL, "native", "sim")
    start = Start(job_id="rv", attempt=0, model=MODEL, provider="sim", api="native")
    begun = await store.begin("rv", "1-1", "c", start)
    await store.finish("rv", begun.attempt, 1, review_done("rv", begun.attempt), {})
    reviews = ReviewQueue(r, keys)
    entry = await reviews.add_from_events("rv")
    assert entry is not None and await reviews.add_from_events("rv") == entry


def review_item_of(job_id: str) -> ReviewItem:
    verdict = Verdict(decision="review", reasons=["1 low segment"], n_low=1, n_medium=0)
    return ReviewItem(
        job_id=job_id,
        attempt=1,
        model=MODEL,
        verdict=verdict,
        confidence=0.1,
        low_segments=[],
        signals=Signals(),
    )


async def reviewer_operations(r: Redis, admin: Redis, prefix: str) -> None:
    """review list (before and after the group exists), take, resolve (by the marker, and by
    reading the stream when the marker expired), take skipping an entry resolved untaken."""
    keys = Keys(prefix)
    await admin.script_flush()
    await ReviewQueue(admin, keys).add(review_item_of("r1"))
    await ReviewQueue(admin, keys).add(review_item_of("r2"))
    reviews = ReviewQueue(r, keys)
    assert [e.item.job_id for e in await reviews.items()] == ["r1", "r2"]
    assert [e.item.job_id for e in await reviews.take("ana", 1)] == ["r1"]
    assert [e.taken_by for e in await reviews.items()] == ["ana", None]
    await reviews.resolve("r1", True, "ok")
    await admin.delete(keys.review_marker("r2"))
    await reviews.resolve("r2", False)
    assert await reviews.take("bo", 5) == []
    await ReviewQueue(admin, keys).add(review_item_of("r3"))
    assert [e.item.job_id for e in await reviews.take("cy", 1)] == ["r3"]
    assert [e.taken_by for e in await reviews.take("di", 1, claim_idle_ms=0)] == ["di"]  # cy left it
    assert await admin.xlen(keys.feedback) == 2
    await health_check(r)


async def budget_operations(r: Redis, prefix: str) -> None:
    """A provider's shared budget (worker.ratelimit), call by call as Budgets sends them (it only
    logs a refused settling call): listed for stats, granted, refused, renewed, cut by a 429,
    left, settled."""
    lim = Provider(
        native_url="http://127.0.0.1:9/{model}",
        max_concurrency=1,
        requests_per_minute=600,
        tokens_per_minute=60_000,
    )
    settings = Settings(prefix=prefix, default_provider="lim", providers={"lim": lim})
    verdict = admit("1-0", encode_job(Job(model="m", input="hi", id="rl")), settings)
    assert isinstance(verdict, Admitted)
    budgets = Budgets(r, Keys(prefix), settings)
    scope = budgets.scope_for(verdict)
    assert scope is not None
    await budgets.register(scope)
    first, _, _ = await budgets.acquire_once(scope, "t1", 100, 30_000)
    assert first is not None
    assert (await budgets.acquire_once(scope, "t2", 100, 30_000))[2] == "concurrency"
    assert await budgets.renew_once() == 1
    await budgets.throttle(first, 0)
    await budgets.release(scope, "t2", "fail", 0.0)  # t2 stops waiting
    second, _, _ = await budgets.acquire_once(scope, "t3", 100, 30_000)
    assert second is not None
    await budgets.release(scope, "t3", "ok", 50.0)


async def producer_operations(r: Redis, admin: Redis, prefix: str) -> None:
    """Enqueue, cancel a queued job, cancel a running one (published to its worker)."""
    await admin.script_flush()
    client = Client(r, prefix=prefix)
    queued = await client.enqueue(model=MODEL, input="x")
    assert await client.cancel(queued) == "cancelled"
    running = await client.enqueue(model=MODEL, input="x")
    await admin.hset(Keys(prefix).state(running), "state", "running")
    assert await client.cancel(running) == "requested"
    await health_check(r)


async def subscriber_operations(r: Redis, admin: Redis, prefix: str) -> None:
    """result, subscribe (live, and to a job that does not exist), status."""
    keys = Keys(prefix)
    store = JobStore(admin, keys)
    await store.create("s", MODEL, "native", "sim")
    begun = await store.begin(
        "s", "1-1", "c", Start(job_id="s", attempt=0, model=MODEL, provider="sim", api="native")
    )
    await store.finish("s", begun.attempt, 1, done_event("s", begun.attempt), {})
    client = Client(r, prefix=prefix, block_ms=50)
    assert isinstance(await client.result("s", timeout=5), Done)
    assert [type(i.event) for i in [i async for i in client.subscribe("s", timeout=5)]] == [Start, Done]
    with pytest.raises(JobNotFound):
        async for _ in client.subscribe("gone", timeout=5):
            pass
    status = await client.status("s")
    assert status is not None and status.state == "done"
    await health_check(r)


async def feedback_operations(r: Redis, admin: Redis, prefix: str) -> None:
    """feedback on a finished job, refused feedback on a queued one, calibrate's read."""
    keys = Keys(prefix)
    store = JobStore(admin, keys)
    await store.create("f", MODEL, "native", "sim")
    begun = await store.begin(
        "f", "1-1", "c", Start(job_id="f", attempt=0, model=MODEL, provider="sim", api="native")
    )
    await store.finish("f", begun.attempt, 1, done_event("f", begun.attempt), {})
    await store.create("q", MODEL, "native", "sim")
    client = Client(r, prefix=prefix)
    await client.feedback("f", True, "ok")
    with pytest.raises(FeedbackError, match="has not finished"):
        await client.feedback("q", False)
    assert [fb.job_id async for _, fb in read_feedback(r, keys)] == ["f"]
    # an expired job whose review entry (named by its marker) keeps its signals
    signals = encode_signals(Signals(confidence=0.3, n_scored=2))
    fields = {"job_id": "gone", "model": MODEL, "signals": signals, "item": b"{}"}
    entry = await admin.xadd(keys.review, fields)  # type: ignore[arg-type]
    await admin.hset(keys.review_marker("gone"), "entry", entry)
    await client.feedback("gone", False, "from the review entry")
    await health_check(r)


async def operator_operations(r: Redis, admin: Redis, prefix: str) -> None:
    """dead list, redrive one, redrive all, purge; stats."""
    keys = Keys(prefix)
    await admin.script_flush()
    queue = JobQueue(admin, admin, keys, "c1", dead_maxlen=100)
    await queue.ensure_group()
    for job_id in ("d1", "d2", "d3"):
        entry = await admin.xadd(keys.jobs, {"job": job_payload(job_id)})
        await admin.xreadgroup("workers", "c1", {keys.jobs: ">"})
        await queue.dead_letter(as_text(entry), job_payload(job_id), "bad", job_id=job_id, code="x")
    rows = await list_dead(r, keys)
    assert [row["job_id"] for row in rows] == ["d1", "d2", "d3"]
    store = JobStore(r, keys)
    assert [m["job_id"] for m in await redrive(r, store, [rows[0]["id"]])] == ["d1"]
    assert [m["job_id"] for m in await redrive(r, store, None)] == ["d2", "d3"]
    await queue.dead_letter("1-1", job_payload("d4"), "bad", job_id="d4", code="x")
    assert await purge_dead(r, keys) == 1
    await budget_operations(admin, prefix)  # a worker used a provider budget
    stats = await collect_stats(r, prefix, budgets=True)
    assert stats["length"] == 3 and stats["consumers"][0]["name"] == "c1"
    assert [(b["scope"], b["granted"]) for b in stats["budgets"]] == [("lim", 2)]
    await health_check(r)


async def gateway_operations(r: Redis, admin: Redis, prefix: str) -> None:
    """Enqueue (in-flight limit, pruned when full), state, replay and live reads, the expiry
    sweep, cancel of a queued and of a running job: the gateway's whole job, without HTTP."""
    import hashlib

    from worker.gateway.app import Gateway, Principal, Refused
    from worker.gateway.auth import TokenSigner
    from worker.settings import Tenant

    await admin.script_flush()
    keys = Keys(prefix)
    tenant = Tenant(key_sha256=hashlib.sha256(b"k").hexdigest(), max_inflight_jobs=1)
    settings = Settings(prefix=prefix, tenants={"t": tenant})
    gateway = Gateway(settings, redis=r, reader=r, signer=TokenSigner(b"s" * 32))
    who = Principal("t", tenant)
    body = msgspec.json.encode({"id": "g1", "model": MODEL, "input": "x"})
    assert (await gateway.submit(who, body))[0] == 201
    with pytest.raises(Refused, match="max_inflight_jobs"):
        await gateway.submit(who, body.replace(b"g1", b"g2"))
    await admin.hset(keys.state("t/g1"), "state", "done")  # g1 ended: pruned, g2 admitted
    assert (await gateway.submit(who, body.replace(b"g1", b"g2")))[0] == 201
    assert (await gateway.state_of(who, "g2")).state == "queued"
    store = JobStore(admin, keys)
    entry = as_text(await admin.hget(keys.state("t/g2"), "entry"))
    begun = await store.begin(
        "t/g2", entry, "c", Start(job_id="t/g2", attempt=0, model=MODEL, provider="sim", api="native")
    )
    assert await r.xrange(keys.events(await gateway.resolve(who, "g2")))  # a replay
    assert await gateway.stream_end(keys.events("t/g2")) != "0-0"  # where a new feed starts
    watch, _ = gateway.hub.attach("t/g2", "0-0", 1 << 20)
    assert await gateway.hub.read_once(list(gateway.hub.feeds.values())) == 1  # the live read
    await gateway.hub.sweep()
    await gateway.hub.sweep()  # silent since the last sweep: its keys exist, nothing ends
    assert [e.type for e in watch.take()] == ["start"] and not watch.gone
    await store.finish("t/g2", begun.attempt, 1, done_event("t/g2", begun.attempt), {})
    assert (await gateway.cancel_job("g2", "t/g2", "stop")).outcome == "terminal"
    await admin.hset(keys.state("t/g1"), "state", "running")
    assert (await gateway.cancel_job("g1", "t/g1", "stop")).outcome == "requested"
    await gateway.limiter.release("t", "t/g2")
    assert (await gateway.submit(who, body.replace(b"g1", b"g3")))[0] == 201
    assert (await gateway.cancel_job("g3", "t/g3", "stop")).outcome == "cancelled"
    await health_check(r)


Operations = Callable[[Redis, Redis, str], Awaitable[None]]
OPERATIONS: dict[str, Operations] = {
    "gateway": gateway_operations,
    "worker": worker_operations,
    "producer": producer_operations,
    "subscriber": subscriber_operations,
    "operator": operator_operations,
    "feedback": feedback_operations,
    "reviewer": reviewer_operations,
}


@pytest.fixture
async def admin(acl_server: RedisServer) -> AsyncIterator[Redis]:
    client = redis_client(acl_server.url)
    yield client
    await client.aclose()


async def run_as(url: str, role: str, admin: Redis, prefix: str, *, cluster: bool = False) -> None:
    user = redis_client(url, block_seconds=1.0, cluster=cluster)
    try:
        await OPERATIONS[role](user, admin, prefix)
    finally:
        await user.aclose()


def test_every_role_has_its_operations() -> None:
    assert sorted(OPERATIONS) == sorted(ROLES)


@pytest.mark.parametrize("role", sorted(ROLES))
async def test_each_role_does_its_job_with_its_rules(
    role: str, users: Users, admin: Redis, prefix: str
) -> None:
    await run_as(users.role(role, prefix), role, admin, prefix)


GRANTS = [(role, i, rule) for role in sorted(ROLES) for i, rule in enumerate(acl_rules(role, prefix="P"))]


@pytest.mark.parametrize(("role", "index", "rule"), GRANTS, ids=[f"{r}-{rule}" for r, _, rule in GRANTS])
async def test_every_grant_is_needed(
    role: str, index: int, rule: str, users: Users, admin: Redis, prefix: str
) -> None:
    rules = acl_rules(role, prefix=prefix)
    del rules[index]
    with pytest.raises(ResponseError) as caught:
        await run_as(users.make(rules), role, admin, prefix)
    assert refused(caught.value), caught.value


async def test_a_producer_reads_nothing_beyond_its_role(users: Users, admin: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    producer = redis_client(users.role("producer", prefix))
    try:
        job_id = await Client(producer, prefix=prefix).enqueue(model=MODEL, input="x")
        refusals: list[Callable[[], Awaitable[Any]]] = [
            lambda: producer.xread({keys.events(job_id): "0"}),  # no events of any job
            lambda: producer.hgetall(keys.state(job_id)),
            lambda: producer.xrange(keys.jobs),  # it may add to the queue, never read it
            lambda: producer.xlen(keys.dead),
            lambda: producer.xreadgroup("workers", "x", {keys.jobs: ">"}),
            lambda: producer.get("other:key"),
            lambda: producer.publish("other:channel", "x"),
        ]
        for attempt in refusals:
            with pytest.raises(NoPermissionError):
                await attempt()
    finally:
        await producer.aclose()


async def test_a_subscriber_can_neither_enqueue_nor_cancel(users: Users, prefix: str) -> None:
    subscriber = redis_client(users.role("subscriber", prefix))
    client = Client(subscriber, prefix=prefix)
    try:
        with pytest.raises(NoPermissionError):
            await client.enqueue(model=MODEL, input="x")
        with pytest.raises(NoPermissionError):
            await client.cancel("job-1")
        with pytest.raises(NoPermissionError):
            await subscriber.publish(Keys(prefix).cancel, "job-1\nx")
    finally:
        await subscriber.aclose()


async def test_a_worker_as_the_worker_user_runs_a_job_end_to_end(
    start_worker: Callable[..., Awaitable[RunningWorker]], users: Users, prefix: str
) -> None:
    await start_worker(redis_url=users.role("worker", prefix))
    producer = Client(redis_client(users.role("producer", prefix)), prefix=prefix)
    subscriber = Client(redis_client(users.role("subscriber", prefix), block_seconds=2.0), prefix=prefix)
    try:
        job_id = await producer.enqueue(model=MODEL, input="hello")
        done = await subscriber.result(job_id, timeout=30)
        assert done.finish_reason and done.text
    finally:
        await producer.aclose()
        await subscriber.aclose()


# -- Redis Cluster ---------------------------------------------------------------------------


@pytest.fixture
async def cluster_admin(redis_cluster: RedisClusterServers) -> AsyncIterator[Redis]:
    client = redis_client(redis_cluster.url, cluster=True)
    yield client
    await client.aclose()


@pytest.fixture
def cluster_users(redis_cluster: RedisClusterServers) -> Iterator[Users]:
    made = Users(*redis_cluster.nodes)
    yield made
    made.close()


@pytest.mark.parametrize("role", sorted(ROLES))
async def test_each_role_does_its_job_on_a_cluster(
    role: str, cluster_users: Users, cluster_admin: Redis, prefix: str
) -> None:
    url = cluster_users.make(acl_rules(role, prefix=prefix, cluster=True))
    await run_as(url, role, cluster_admin, prefix, cluster=True)


@pytest.mark.parametrize("command", ["cluster|slots", "command"])  # `asking` only while a slot moves
async def test_the_cluster_clients_commands_are_needed(
    command: str, cluster_users: Users, cluster_admin: Redis, prefix: str
) -> None:
    url = cluster_users.make(without(acl_rules("subscriber", prefix=prefix, cluster=True), f"+{command}"))
    # redis-py takes a refused slot map for a node without cluster mode
    with pytest.raises((ResponseError, RedisClusterException)) as caught:
        await run_as(url, "subscriber", cluster_admin, prefix, cluster=True)
    assert refused(caught.value) or "Cluster mode is not enabled" in str(caught.value), caught.value


async def test_a_worker_on_a_cluster_without_the_slot_map_stops_at_start_up(
    cluster_users: Users, settings_for: Callable[..., Any], prefix: str, redis_cluster: RedisClusterServers
) -> None:
    url = cluster_users.make(without(acl_rules("worker", prefix=prefix, cluster=True), "+cluster|slots"))
    settings = settings_for(redis_url=url, redis_cluster=True)
    r, reader = redis_client(url, cluster=True), redis_client(url, block_seconds=0.5, cluster=True)
    http = http_client(settings)
    try:
        async with asyncio.timeout(20):
            with pytest.raises(NotPermitted, match=r"may not run CLUSTER SLOTS.*worker --cluster --prefix"):
                await Worker(settings, redis=r, reader=reader, http=http).run(asyncio.Event())
    finally:
        await r.aclose()
        await reader.aclose()
        await http.aclose()


# -- a worker missing a permission stops at start-up ------------------------------------------


def without(rules: list[str], rule: str) -> list[str]:
    assert rule in rules
    return [r for r in rules if r != rule]


@pytest.mark.parametrize(
    ("dropped", "named"),
    [
        ("+xgroup|create", "XGROUP CREATE on {<P>}:jobs"),
        ("~{<P>}:jobs", "XGROUP CREATE on {<P>}:jobs"),
        ("+xreadgroup", "XREADGROUP on {<P>}:jobs"),
        ("~{<P>}:dead", "XLEN on {<P>}:dead"),
        ("~<P>:job:*", "HGET on <P>:job:"),
        ("+script|load", "SCRIPT LOAD"),
        ("+evalsha", "EVALSHA on {<P>}:jobs"),
        ("&<P>:cancel", "SUBSCRIBE on <P>:cancel"),
        ("+subscribe", "SUBSCRIBE on <P>:cancel"),
    ],
)
async def test_a_worker_without_a_permission_stops_at_start_up_naming_it(
    dropped: str, named: str, users: Users, settings_for: Callable[..., Any], prefix: str
) -> None:
    rules = without(acl_rules("worker", prefix=prefix), dropped.replace("<P>", prefix))
    url = users.make(rules)
    settings = settings_for(redis_url=url)
    r, reader, http = redis_client(url), redis_client(url, block_seconds=0.5), http_client(settings)
    worker = Worker(settings, redis=r, reader=reader, http=http)
    try:
        async with asyncio.timeout(10):  # at once, not after a retry loop
            with pytest.raises(NotPermitted) as caught:
                await worker.run(asyncio.Event())
    finally:
        await r.aclose()
        await reader.aclose()
        await http.aclose()
    message = str(caught.value)
    assert named.replace("<P>", prefix) in message, message
    assert f"python -m worker.roles worker --prefix {prefix}" in message
    assert "\n" not in message and url.split("@")[0].split(":")[-1] not in message  # never the password


@pytest.mark.parametrize("dropped", ["+xgroup|create", "~{<P>}:jobs"])
def test_tokenwire_worker_exits_2_with_one_line(dropped: str, users: Users, prefix: str) -> None:
    url = users.make(without(acl_rules("worker", prefix=prefix), dropped.replace("<P>", prefix)))
    command = [sys.executable, "-m", "worker", "worker", "--redis-url", url, "--prefix", prefix]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=_environ())
    assert done.returncode == 2, done.stderr
    said = [line for line in done.stderr.splitlines() if line.startswith("tokenwire:")]
    assert len(said) == 1 and "XGROUP CREATE on {" + prefix + "}:jobs" in said[0], done.stderr
    assert "retrying" not in done.stderr + done.stdout


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")} | {
        "TOKENWIRE_METRICS_PORT": "0"
    }
