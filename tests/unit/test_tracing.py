"""worker/tracing.py without Redis: what a request span records of its URL (never a path or query,
which may hold a key), and that everything is a no-op without the OpenTelemetry API."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from worker import tracing


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    from opentelemetry import trace

    monkeypatch.setattr(trace, "get_tracer", provider.get_tracer)
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)  # as if set for the process
    return exporter


def test_a_request_span_keeps_host_and_port_only(exporter: InMemorySpanExporter) -> None:
    url = (
        "https://generativelanguage.example:8443/v1beta/models/g:streamGenerateContent?alt=sse&key=SECRETKEY"
    )
    with tracing.request_span("gemini", "g", url):
        pass
    (span,) = exporter.get_finished_spans()
    assert span.name == "generate_content g"
    assert dict(span.attributes or {}) == {
        "gen_ai.operation.name": "generate_content",
        "gen_ai.request.model": "g",
        "server.address": "generativelanguage.example",
        "server.port": 8443,
    }
    assert "SECRETKEY" not in repr(span.to_json())


def test_a_bad_port_in_a_url_is_left_out_not_raised(exporter: InMemorySpanExporter) -> None:
    with tracing.request_span("chat", "m", "http://host:99999/x"):
        pass
    (span,) = exporter.get_finished_spans()
    assert "server.port" not in (span.attributes or {})


def test_current_traceparent_is_none_outside_a_span() -> None:
    assert tracing.current_traceparent() is None


async def test_without_the_api_every_function_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "_otel", lambda: None)

    @contextlib.asynccontextmanager
    async def opener() -> AsyncIterator[int]:
        yield 7

    assert tracing.traced(opener, "chat", "m", "http://h") is opener
    assert tracing.current_traceparent() is None
    with tracing.job_span(
        "j", "m", "p", "native", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "q"
    ) as s:
        assert s is None
    with tracing.attempt_span(1, "m", "p", "native") as s:
        tracing.end_attempt(s, object())
        assert s is None
    with tracing.request_span("chat", "m", "http://h") as s:
        assert s is None


def _no_provider(monkeypatch: pytest.MonkeyPatch, provider: object) -> list[str]:
    """The API with ``provider`` as the process's (the default proxy, or the no-op one), its tracers
    the no-op tracer (what the proxy hands out while no provider is set, whatever another test set
    for the process); the names of the tracers asked for are recorded."""
    from opentelemetry import trace

    asked: list[str] = []

    def get_tracer(name: str, *args: object, **kwargs: object) -> trace.Tracer:
        asked.append(name)
        return trace.NoOpTracer()

    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    monkeypatch.setattr(trace, "get_tracer", get_tracer)
    return asked


@pytest.mark.parametrize("kind", ["proxy", "noop"])
async def test_without_a_tracer_provider_no_tracer_is_asked(
    monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    from opentelemetry import trace

    provider = trace.ProxyTracerProvider() if kind == "proxy" else trace.NoOpTracerProvider()
    asked = _no_provider(monkeypatch, provider)

    @contextlib.asynccontextmanager
    async def opener() -> AsyncIterator[int]:
        yield 7

    assert tracing.traced(opener, "chat", "m", "http://h") is opener
    with tracing.job_span("j", "m", "p", "native", None, "q") as s:
        assert s is None
    with tracing.attempt_span(1, "m", "p", "native") as s:
        tracing.end_attempt(s, object())
        assert s is None
    with tracing.request_span("chat", "m", "http://h") as s:
        assert s is None
    assert asked == []


def test_without_a_tracer_provider_a_jobs_traceparent_is_still_made_current(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The no-op tracer makes the producer's context current for the job (what an instrumented
    library in the process would propagate): that stays so without a provider."""
    from opentelemetry import trace

    asked = _no_provider(monkeypatch, trace.ProxyTracerProvider())
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with tracing.job_span("j", "m", "p", "native", traceparent, "q") as span:
        assert span is not None and not span.is_recording()
        current = trace.get_current_span().get_span_context()
        assert f"{current.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
        assert f"{current.span_id:016x}" == "b7ad6b7169203331"
        with tracing.attempt_span(1, "m", "p", "native") as attempt:
            assert attempt is None
            assert trace.get_current_span().get_span_context() == current
    assert asked == ["tokenwire"]
    assert not trace.get_current_span().get_span_context().is_valid
