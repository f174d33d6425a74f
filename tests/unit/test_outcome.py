"""An attempt says how it ended as one worker.outcome value, built from the few things it is given
(an AttemptContext), never from the runner: upstream on httpx.MockTransport, events on fakeredis."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import httpx
import msgspec
import pytest
from redis.exceptions import ResponseError

from worker.admit import Admitted, admit
from worker.attempt import Attempt, AttemptContext
from worker.candidates import CandidatesAttempt
from worker.events import Cancelled, Done, Error
from worker.jobs import Escalate as EscalateTo
from worker.jobs import Job, encode_job
from worker.keys import Keys
from worker.metrics import Metrics
from worker.outcome import Escalate, Failed, Fenced, Finished, WriteFailed
from worker.publisher import Entry, Publisher
from worker.ratelimit import Budgets
from worker.settings import Provider, Settings
from worker.upstream.adapters import default_adapters
from worker.upstream.http import StreamLimits

WORKER = Path(__file__).resolve().parents[2] / "worker"
BOUND = 10.0
SETTINGS = Settings(
    prefix="t",
    default_provider="up",
    providers={"up": Provider(native_url="https://up.test/v1/inference/{model}")},
)
SSE = {"content-type": "text/event-stream"}


# -- imports ------------------------------------------------------------------------------------


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(WORKER.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The worker modules ``path`` imports, counting imports under ``if TYPE_CHECKING``."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            submodules = {f"{target}.{alias.name}" for alias in node.names} & modules
            found.update(submodules or {target})
    return (found & modules) - {name}


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in WORKER.rglob("*.py")}
    return {name: _imports(path, set(paths)) for name, path in paths.items()}


def test_attempt_does_not_import_the_runner() -> None:
    imports = _graph()["worker.attempt"]
    assert "worker.runner" not in imports
    assert "worker.outcome" in imports  # the parser sees relative imports: this one must be found


def test_the_worker_package_has_no_import_cycle() -> None:
    graph = _graph()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> Iterator[list[str]]:
        if name in path:
            yield [*path[path.index(name) :], name]
            return
        if name in done:
            return
        for dep in sorted(graph[name]):
            yield from visit(dep, [*path, name])
        done.add(name)

    cycles = [cycle for name in sorted(graph) for cycle in visit(name, [])]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


# -- outcomes -----------------------------------------------------------------------------------


def token(text: str, logprob: float = -0.1) -> str:
    return json.dumps({"token": {"id": 1, "text": text, "logprob": logprob, "special": False}})


def final(text: str = "</s>") -> str:
    return json.dumps(
        {
            "token": {"id": 2, "text": text, "logprob": -0.01, "special": True},
            "generated_text": "ab",
            "details": {"finish_reason": "eos_token", "generated_tokens": 3},
        }
    )


def sse(*events: str) -> bytes:
    return b"".join(b"data: %s\n\n" % e.encode() for e in events)


def replies(body: bytes, status: int = 200) -> httpx.MockTransport:
    return httpx.MockTransport(lambda _: httpx.Response(status, headers=SSE, content=body))


class _Rig:
    def __init__(self, redis: fakeredis.FakeAsyncRedis) -> None:
        self.redis = redis
        self.clients: list[httpx.AsyncClient] = []
        self.tasks: list[asyncio.Task[None]] = []

    def context(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        publisher: Publisher | None = None,
        environ: dict[str, str] | None = None,
        settings: Settings = SETTINGS,
    ) -> AttemptContext:
        http = httpx.AsyncClient(transport=transport)
        self.clients.append(http)
        publisher = publisher or Publisher(self.redis, maxlen=1000)
        self.tasks.append(asyncio.create_task(publisher.run()))
        return AttemptContext(
            settings=settings,
            http=http,
            adapters=default_adapters(),
            publisher=publisher,
            keys=Keys(settings.prefix),
            limits=StreamLimits.from_settings(settings, max_tokens=settings.max_tokens_cap),
            environ=environ or {},
        )


@pytest.fixture
async def rig() -> AsyncIterator[_Rig]:
    redis = fakeredis.FakeAsyncRedis()
    rig = _Rig(redis)
    yield rig
    for task in rig.tasks:
        task.cancel()
    for client in rig.clients:
        await client.aclose()
    await redis.aclose()


def admitted(settings: Settings = SETTINGS, **job: Any) -> Admitted:
    verdict = admit("1-0", encode_job(Job(model="m", input="hi", id="j1", **job)), settings)
    assert isinstance(verdict, Admitted), verdict
    return verdict


async def run(ctx: AttemptContext, job: Admitted, *, deadline: float = BOUND) -> Any:
    # the attempt's stream exists (empty here), as BEGIN leaves it: a job's sink never creates it
    await ctx.publisher.redis.xgroup_create(ctx.keys.events(job.job_id), "exists", id="0", mkstream=True)
    attempt = Attempt(ctx, job, 1, asyncio.get_running_loop().time() + deadline)
    async with asyncio.timeout(BOUND):
        return await attempt.run()


async def test_a_complete_stream_finishes_with_done_and_its_token_count(rig: _Rig) -> None:
    outcome = await run(rig.context(replies(sse(token("a"), token("b"), final()))), admitted())
    assert isinstance(outcome, Finished) and isinstance(outcome.terminal, Done)
    assert (outcome.terminal.text, outcome.terminal.finish_reason, outcome.tokens) == ("ab", "eos_token", 3)
    assert outcome.record()["tokens"] == 3 and outcome.record()["finish_reason"] == "eos_token"
    assert await rig.redis.xlen("t:job:{j1}:events") == 3


@pytest.mark.parametrize(("status", "retryable"), [(503, True), (400, False)])
async def test_an_http_error_fails_saying_whether_a_retry_may_help(
    rig: _Rig, status: int, retryable: bool
) -> None:
    outcome = await run(rig.context(replies(b'{"error": "no"}', status)), admitted())
    assert isinstance(outcome, Failed)
    assert (outcome.error.status, outcome.error.retryable) == (status, retryable)


async def test_a_429_waits_within_the_attempt_and_the_next_answer_streams(rig: _Rig) -> None:
    """A 429 is no failure of the attempt: it waits (Retry-After) and asks again (worker.ratelimit)."""
    answers = [httpx.Response(429, headers={"retry-after-ms": "10"}, content=b"{}")] * 2
    answers.append(httpx.Response(200, headers=SSE, content=sse(token("a"), final())))
    transport = httpx.MockTransport(lambda _: answers.pop(0))
    outcome = await run(rig.context(transport), admitted())
    assert isinstance(outcome, Finished) and isinstance(outcome.terminal, Done), outcome
    assert answers == []


async def test_429s_until_the_deadline_fail_rate_limited_not_retryable(rig: _Rig) -> None:
    transport = httpx.MockTransport(lambda _: httpx.Response(429, headers={"retry-after-ms": "50"}))
    outcome = await run(rig.context(transport), admitted(), deadline=0.3)
    assert isinstance(outcome, Failed)
    assert (outcome.error.code, outcome.error.retryable) == ("rate_limited", False)
    assert "job_deadline_seconds" in outcome.error.message


@pytest.mark.parametrize("candidates", [None, 2])
async def test_a_deadline_that_passes_while_waiting_for_budget_fails_rate_limited(
    rig: _Rig, candidates: int | None
) -> None:
    """Whichever timer fires first: here the job's deadline, while Redis is slow to answer the
    second ask for a permit (the wait's own check saw time enough), not a generic
    deadline_exceeded: the job never got budget (a CI run under load met exactly this)."""
    provider = Provider(
        native_url="https://up.test/{model}", chat_url="https://up.test/v1/chat", max_concurrency=1
    )
    settings = Settings(prefix="t", default_provider="up", providers={"up": provider})

    def never(_: httpx.Request) -> httpx.Response:
        raise AssertionError("no request may be sent without a permit")

    ctx = dataclasses.replace(
        rig.context(httpx.MockTransport(never), settings=settings),
        budgets=Budgets(rig.redis, Keys("t"), settings, Metrics()),
    )
    assert ctx.budgets is not None
    fields: dict[str, Any] = (
        {"input": "hi"}
        if candidates is None
        else {"api": "chat", "messages": [{"role": "user", "content": "hi"}], "candidates": {"n": candidates}}
    )
    job = msgspec.convert({"model": "m", "id": "j1", **fields}, Job)
    verdict = admit("1-0", encode_job(job), settings)
    assert isinstance(verdict, Admitted)
    scope = ctx.budgets.scope_for(verdict)
    assert scope is not None
    taken, _, _ = await ctx.budgets.acquire_once(scope, "peer", 0, 60_000)  # the only slot
    assert taken is not None
    asks = 0
    ask = ctx.budgets.acquire_once

    async def slow(*args: Any) -> Any:
        nonlocal asks
        asks += 1
        if asks > 1:  # Redis stalls on the second ask: only the job's own deadline ends it
            await asyncio.Event().wait()
        return await ask(*args)

    ctx.budgets.acquire_once = slow  # type: ignore[method-assign,assignment]
    await ctx.publisher.redis.xgroup_create(ctx.keys.events(verdict.job_id), "exists", id="0", mkstream=True)
    kind = Attempt if candidates is None else CandidatesAttempt
    attempt = kind(ctx, verdict, 1, asyncio.get_running_loop().time() + 0.3)
    async with asyncio.timeout(BOUND):
        outcome = await attempt.run()
    assert asks == 2
    if candidates is None:  # not retried: the runner ends the job with its error
        assert isinstance(outcome, Failed), outcome
        assert (outcome.error.code, outcome.error.retryable) == ("rate_limited", False)
        message = outcome.error.message
    else:  # every candidate failed so: the job's one error says so
        assert isinstance(outcome, Finished) and isinstance(outcome.terminal, Error), outcome
        assert outcome.terminal.code == "rate_limited"
        message = outcome.terminal.message
    assert "job_deadline_seconds" in message and "'up'" in message
    assert "concurrency" in message  # why it waited


async def test_a_stream_cut_before_its_end_fails_retryably(rig: _Rig) -> None:
    outcome = await run(rig.context(replies(sse(token("a")))), admitted())
    assert isinstance(outcome, Failed)
    assert (outcome.error.code, outcome.error.retryable) == ("upstream_incomplete", True)


async def test_a_missing_api_key_finishes_with_its_error_without_a_request(rig: _Rig) -> None:
    settings = Settings(
        prefix="t",
        default_provider="up",
        providers={"up": Provider(native_url="https://up.test/{model}", api_key_env="UP_KEY")},
    )

    def never(_: httpx.Request) -> httpx.Response:
        raise AssertionError("no request may be sent without the key")

    ctx = rig.context(httpx.MockTransport(never), settings=settings)
    outcome = await run(ctx, admitted(settings))
    assert isinstance(outcome, Finished) and isinstance(outcome.terminal, Error)
    assert outcome.terminal.code == "missing_api_key" and "UP_KEY" in outcome.terminal.message
    assert outcome.record() == {"tokens": 0, "error_code": "missing_api_key"}


async def test_the_job_deadline_finishes_with_deadline_exceeded(rig: _Rig) -> None:
    async def silent() -> AsyncIterator[bytes]:
        yield sse(token("a"))
        await asyncio.Event().wait()  # never more: only the deadline ends this
        yield b""  # pragma: no cover

    transport = httpx.MockTransport(lambda _: httpx.Response(200, headers=SSE, content=silent()))
    outcome = await run(rig.context(transport), admitted(), deadline=0.2)
    assert isinstance(outcome, Finished) and isinstance(outcome.terminal, Error)
    assert (outcome.terminal.code, outcome.tokens) == ("deadline_exceeded", 1)


async def test_low_confidence_after_the_watched_tokens_escalates(rig: _Rig) -> None:
    body = sse(*(token(c, logprob=-3.0) for c in "abcdef"), final())
    job = admitted(escalate=EscalateTo(model="strong", below=0.9, after_tokens=2))
    outcome = await run(rig.context(replies(body)), job)
    assert isinstance(outcome, Escalate)
    assert outcome.reason.startswith("confidence ") and "after 2 tokens" in outcome.reason
    assert (outcome.record.from_model, outcome.record.tokens, outcome.record.below) == ("m", 2, 0.9)


async def test_low_confidence_at_the_end_escalates_instead_of_finishing(rig: _Rig) -> None:
    job = admitted(escalate=EscalateTo(model="strong", below=0.9))
    outcome = await run(rig.context(replies(sse(token("a", -3.0), final()))), job)
    assert isinstance(outcome, Escalate) and "at the end" in outcome.reason


async def test_a_confident_answer_finishes_although_it_could_escalate(rig: _Rig) -> None:
    job = admitted(escalate=EscalateTo(model="strong", below=0.5))
    outcome = await run(rig.context(replies(sse(token("a", -0.01), final()))), job)
    assert isinstance(outcome, Finished) and isinstance(outcome.terminal, Done)


async def test_a_superseded_attempt_is_fenced(rig: _Rig) -> None:
    await rig.redis.xadd("t:job:{j1}:events", {"event": b"start"}, id="2-0")  # attempt 2 began
    outcome = await run(rig.context(replies(sse(token("a"), token("b"), final()))), admitted())
    assert outcome == Fenced()


class _Refusing(Publisher):
    async def _pipeline(self, entries: list[Entry]) -> list[object]:
        return [ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")] * len(
            entries
        )


async def test_events_that_cannot_be_written_fail_the_attempt_not_the_job(rig: _Rig) -> None:
    ctx = rig.context(replies(sse(token("a"), final())), publisher=_Refusing(rig.redis, maxlen=10))
    outcome = await run(ctx, admitted())
    assert isinstance(outcome, WriteFailed) and "WRONGTYPE" in str(outcome.error)


async def test_the_runner_s_ends_are_the_attempt_s_terminal_events(rig: _Rig) -> None:
    ctx = rig.context(replies(sse(token("a"), final())))
    attempt = Attempt(ctx, admitted(metadata={"k": "v"}), 4, asyncio.get_running_loop().time() + BOUND)
    cancelled = attempt.end_cancelled("user asked")
    assert cancelled.terminal == Cancelled(job_id="j1", attempt=4, reason="user asked", metadata={"k": "v"})
    assert cancelled.record() == {"tokens": 0}
    given_up = attempt.end_with_error("upstream_unavailable", "503 (no more retries)")
    assert isinstance(given_up.terminal, Error) and given_up.terminal.attempt == 4


def test_outcomes_are_values() -> None:
    def cancelled() -> Finished:
        return Finished(Cancelled(job_id="j", attempt=1, reason="r", metadata={}), 2)

    assert cancelled() == cancelled() and Fenced() == Fenced()
    with pytest.raises(AttributeError):
        cancelled().tokens = 3  # type: ignore[misc]
