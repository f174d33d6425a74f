"""OpenTelemetry on real Redis with the simulator and a worker: the producer's trace context rides
in the job, the worker's spans (job, attempt, upstream request) continue that trace with the GenAI
attributes, and ``start`` echoes the context. Spans are read from the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from worker import Client, Done, Error, InvalidJob, Start

from .conftest import RunningWorker

pytestmark = pytest.mark.integration

StartWorker = Callable[..., Awaitable[RunningWorker]]
MODEL = "tokenwire/sim;tokens=6"
_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    # the global provider can be set once per process: this module's, shared by its tests
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def _by_name(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in finished if s.name == name]


async def _finished(spans: InMemorySpanExporter) -> tuple[ReadableSpan, ...]:
    """The spans once the job's has ended (it ends after the terminal event, with the ack)."""
    async with asyncio.timeout(10):
        while not _by_name(finished := spans.get_finished_spans(), "tokenwire.job"):
            await asyncio.sleep(0.01)
    return finished


async def _events(client: Client, job_id: str) -> list[Any]:
    return [item.event async for item in client.subscribe(job_id, timeout=30)]


async def test_the_producers_trace_continues_through_job_attempt_and_request(
    start_worker: StartWorker, client: Client, spans: InMemorySpanExporter
) -> None:
    await start_worker()
    tracer = trace.get_tracer("test-producer")
    with tracer.start_as_current_span("produce") as produce:
        job_id = await client.enqueue(model=MODEL, input="hello", id="traced")
    events = await _events(client, job_id)
    assert isinstance(events[-1], Done)
    ctx = produce.get_span_context()
    expected = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    (start,) = [e for e in events if isinstance(e, Start)]
    assert start.traceparent == expected  # echoed on start

    finished = await _finished(spans)
    (job,) = _by_name(finished, "tokenwire.job")
    (attempt,) = _by_name(finished, "tokenwire.attempt")
    requests = [s for s in finished if s.kind == trace.SpanKind.CLIENT]
    assert len(requests) == 1
    request = requests[0]
    assert job.context.trace_id == ctx.trace_id and job.parent is not None
    assert job.parent.span_id == ctx.span_id  # a child of the producer's span
    assert job.kind == trace.SpanKind.CONSUMER
    assert attempt.parent is not None and attempt.parent.span_id == job.context.span_id
    assert request.parent is not None and request.parent.span_id == attempt.context.span_id
    assert job.attributes is not None and attempt.attributes is not None and request.attributes is not None
    assert job.attributes["tokenwire.job.id"] == "traced"
    assert job.attributes["gen_ai.request.model"] == MODEL
    assert attempt.attributes["tokenwire.attempt"] == 1
    assert attempt.attributes["gen_ai.usage.output_tokens"] == events[-1].usage.output_tokens
    assert tuple(attempt.attributes["gen_ai.response.finish_reasons"]) == (events[-1].finish_reason,)  # type: ignore[arg-type]
    assert request.attributes["gen_ai.operation.name"] == "text_completion"
    assert request.attributes["server.address"] == "127.0.0.1"
    assert request.name == f"text_completion {MODEL}"


async def test_a_failed_attempt_is_an_error_span_and_a_raw_job_may_carry_its_context(
    start_worker: StartWorker, client: Client, spans: InMemorySpanExporter
) -> None:
    await start_worker(max_attempts=1)
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    raw = {"id": "raw-traced", "model": "tokenwire/sim;fault=status;status=400", "input": "x"}
    import msgspec

    await client.redis.xadd(
        client.keys.jobs, {"job": msgspec.json.encode({**raw, "traceparent": traceparent})}
    )
    events = await _events(client, "raw-traced")
    assert isinstance(events[-1], Error)
    (start,) = [e for e in events if isinstance(e, Start)]
    assert start.traceparent == traceparent
    finished = await _finished(spans)
    (job,) = _by_name(finished, "tokenwire.job")
    (attempt,) = _by_name(finished, "tokenwire.attempt")
    assert f"{job.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert job.parent is not None and f"{job.parent.span_id:016x}" == "b7ad6b7169203331"
    assert attempt.status.status_code == trace.StatusCode.ERROR
    assert attempt.attributes is not None and attempt.attributes["error.type"] == events[-1].code


async def test_without_a_span_nothing_is_injected_and_events_are_as_before(
    start_worker: StartWorker, client: Client, spans: InMemorySpanExporter
) -> None:
    await start_worker()
    job_id = await client.enqueue(model=MODEL, input="hello")
    events = await _events(client, job_id)
    (start,) = [e for e in events if isinstance(e, Start)]
    entries: Any = await client.redis.xrange(client.keys.events(job_id))
    assert b"traceparent" not in entries[0][1][b"event"]  # the start event is exactly today's
    assert start.traceparent is not None  # UNSET, not None
    (job,) = _by_name(await _finished(spans), "tokenwire.job")
    assert job.parent is None  # a root span: no producer context


async def test_a_malformed_traceparent_is_refused_by_name(client: Client) -> None:
    for bad in (
        "00-abc-def-01",
        "00-" + "0" * 32 + "-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\n",
    ):
        with pytest.raises(InvalidJob, match="traceparent"):
            await client.enqueue(model=MODEL, input="x", traceparent=bad)


async def test_the_same_job_from_two_traces_is_one_job(client: Client, spans: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("test-producer")
    with tracer.start_as_current_span("first"):
        assert await client.enqueue(model=MODEL, input="same", id="twice") == "twice"
    with tracer.start_as_current_span("second"):
        assert await client.enqueue(model=MODEL, input="same", id="twice") == "twice"  # no JobConflict
    assert await client.redis.xlen(client.keys.jobs) == 1
