"""OpenTelemetry spans for jobs, attempts and upstream requests, and the W3C trace context a job
carries from its producer.

Only the OpenTelemetry *API* is used (``pip install tokenwire[otel]``): with no SDK configured in
the process its tracer makes non-recording spans, and without the package every function here is a
no-op, so tracing costs nothing unless an application sets up an SDK (and an exporter) before it
runs the worker. Spans follow the GenAI semantic conventions:

- ``tokenwire.job`` (kind CONSUMER), child of the producer's span when the job carries a
  ``traceparent`` (``Client.enqueue`` injects the caller's current context; a raw ``XADD`` may set
  one): ``tokenwire.job.id``, ``gen_ai.request.model``, ``gen_ai.provider.name``, ``messaging.*``.
- ``tokenwire.attempt`` (INTERNAL) per attempt: ``tokenwire.attempt``, the model and provider of
  that attempt (an escalation has its own), and at its end ``gen_ai.usage.input_tokens``,
  ``gen_ai.usage.output_tokens``, ``gen_ai.response.finish_reasons`` or ``error.type``.
- ``{operation} {model}`` (CLIENT) per upstream request (``gen_ai.operation.name``: ``chat``,
  ``text_completion``, ``generate_content``), with ``server.address``/``server.port``.

The job's ``traceparent`` is also echoed on its ``start`` events.

With the API but no tracer provider set (the API's default proxy, or its no-op provider) every span
would be non-recording: the functions here then skip the tracer altogether (a short job's three
spans cost ~5 % of its CPU otherwise), except that a job carrying a ``traceparent`` still makes its
producer's context current, as the no-op tracer does, for whatever else in the process reads it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, TypeVar
from urllib.parse import urlsplit

__all__ = [
    "TRACEPARENT_PATTERN",
    "attempt_span",
    "current_traceparent",
    "end_attempt",
    "job_span",
    "request_span",
    "traced",
]

T = TypeVar("T")

TRACEPARENT_PATTERN = r"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$(?!\n)"
"""A W3C ``traceparent`` of version 00 (lowercase hex, ids not all zero), as the job schema takes it."""
_TRACEPARENT = re.compile(TRACEPARENT_PATTERN)
_OPERATION = {"chat": "chat", "responses": "chat", "gemini": "generate_content"}
_TRACER_NAME = "tokenwire"


_NOT_LOOKED = object()
_module: Any = _NOT_LOOKED
_idle: tuple[type, ...] = ()  # the API's providers whose tracers only make non-recording spans


def _otel() -> Any | None:
    """The ``opentelemetry.trace`` module, or None when the API is not installed (looked up once)."""
    global _module, _idle
    if _module is _NOT_LOOKED:
        try:
            from opentelemetry import trace
        except ImportError:
            _module = None
            return None
        kinds = (getattr(trace, "ProxyTracerProvider", None), getattr(trace, "NoOpTracerProvider", None))
        _idle = tuple(kind for kind in kinds if isinstance(kind, type))
        _module = trace
    return _module


def _recording() -> Any | None:
    """``opentelemetry.trace`` when a span may record: a tracer provider is set (an SDK's), not
    the API's default proxy or its no-op provider, whose tracers make only non-recording spans."""
    trace = _otel()
    if trace is None or (_idle and isinstance(trace.get_tracer_provider(), _idle)):
        return None
    return trace


def current_traceparent() -> str | None:
    """The caller's current span context as a ``traceparent`` (None without a valid one)."""
    trace = _otel()
    if trace is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    value = carrier.get("traceparent")
    return value if value is not None and _TRACEPARENT.match(value) else None


def _parent(traceparent: str | None) -> Any:
    if traceparent is None or not _TRACEPARENT.match(traceparent):
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": traceparent})


_NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()  # reusable: yields None


def job_span(
    job_id: str, model: str, provider: str, api: str, traceparent: str | None, queue: str
) -> AbstractContextManager[Any]:
    """The span of one job's handling by this worker (every attempt and the terminal event)."""
    trace = _recording()
    if trace is None and traceparent is not None:  # no span records, but the producer's context
        trace = _otel()  # is made current as the no-op tracer makes it
    if trace is None:
        return _NO_SPAN
    return _job_span(trace, job_id, model, provider, api, traceparent, queue)


@contextlib.contextmanager
def _job_span(
    trace: Any, job_id: str, model: str, provider: str, api: str, traceparent: str | None, queue: str
) -> Iterator[Any]:
    attributes = {
        "tokenwire.job.id": job_id,
        "gen_ai.request.model": model,
        "gen_ai.provider.name": provider,
        "tokenwire.api": api,
        "messaging.system": "redis",
        "messaging.destination.name": queue,
        "messaging.operation.type": "process",
    }
    tracer = trace.get_tracer(_TRACER_NAME)
    with tracer.start_as_current_span(
        "tokenwire.job", context=_parent(traceparent), kind=trace.SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span


def attempt_span(attempt: int, model: str, provider: str, api: str) -> AbstractContextManager[Any]:
    trace = _recording()  # non-recording: the no-op tracer's span would be the current one again
    if trace is None:
        return _NO_SPAN
    return _attempt_span(trace, attempt, model, provider, api)


@contextlib.contextmanager
def _attempt_span(trace: Any, attempt: int, model: str, provider: str, api: str) -> Iterator[Any]:
    attributes = {
        "tokenwire.attempt": attempt,
        "gen_ai.request.model": model,
        "gen_ai.provider.name": provider,
        "tokenwire.api": api,
    }
    with trace.get_tracer(_TRACER_NAME).start_as_current_span(
        "tokenwire.attempt", attributes=attributes
    ) as span:
        yield span


def end_attempt(span: Any, outcome: object) -> None:
    """How an attempt ended, on its span: usage and finish reason of a ``done``, else ``error.type``
    (the error code, ``cancelled``, ``escalated``, ``fenced``, ``event_write_failed``). A no-op on
    None or a non-recording span."""
    if span is None or not span.is_recording():
        return
    from .events import Done, Error
    from .outcome import Escalate, Failed, Fenced, Finished

    error: str | None
    if isinstance(outcome, Finished) and isinstance(outcome.terminal, Done):
        done = outcome.terminal
        if done.usage.input_tokens is not None:
            span.set_attribute("gen_ai.usage.input_tokens", done.usage.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", done.usage.output_tokens)
        span.set_attribute("gen_ai.response.finish_reasons", [done.finish_reason])
        return
    if isinstance(outcome, Finished):
        error = outcome.terminal.code if isinstance(outcome.terminal, Error) else "cancelled"
    elif isinstance(outcome, Failed):
        error = outcome.error.code
    elif isinstance(outcome, Escalate):
        span.set_attribute("tokenwire.escalated", True)
        return
    else:
        error = "fenced" if isinstance(outcome, Fenced) else "event_write_failed"
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", error)
    span.set_status(Status(StatusCode.ERROR, error))


def request_span(api: str, model: str, url: str) -> AbstractContextManager[Any]:
    """The upstream request (headers sent until the stream is closed). The URL's host and port
    only: a path or query may hold a key."""
    trace = _recording()
    if trace is None:
        return _NO_SPAN
    return _request_span(trace, api, model, url)


@contextlib.contextmanager
def _request_span(trace: Any, api: str, model: str, url: str) -> Iterator[Any]:
    operation = _OPERATION.get(api, "text_completion")
    parts = urlsplit(url)
    attributes: dict[str, Any] = {"gen_ai.operation.name": operation, "gen_ai.request.model": model}
    if parts.hostname:
        attributes["server.address"] = parts.hostname
    with contextlib.suppress(ValueError):
        if parts.port is not None:
            attributes["server.port"] = parts.port
    with trace.get_tracer(_TRACER_NAME).start_as_current_span(
        f"{operation} {model}", kind=trace.SpanKind.CLIENT, attributes=attributes
    ) as span:
        yield span


def traced(
    opener: Callable[[], AbstractAsyncContextManager[T]], api: str, model: str, url: str
) -> Callable[[], AbstractAsyncContextManager[T]]:
    """``opener`` (an upstream request) inside a :func:`request_span`; ``opener`` itself when no
    span would record (no OpenTelemetry API, or no tracer provider set)."""
    if _recording() is None:
        return opener

    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[T]:
        with request_span(api, model, url):
            async with opener() as value:
                yield value

    return opened
