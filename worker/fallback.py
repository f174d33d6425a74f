"""Capability, not silence: one attempt's request, with logprobs unless its provider+model refuses.

When the provider answers ``logprobs_unsupported`` (:mod:`worker.upstream.classify`), the job's
``logprobs`` policy decides:

* ``required``: the attempt fails with the terminal ``error`` ``logprobs_unsupported`` (never
  retried: the same request is refused again);
* ``preferred`` (the default): the request is sent once more without logprobs, before any token,
  so in the same attempt (its ``start`` stands); the tokens stream with ``logprob: null`` and the
  ``done`` says ``logprobs_available: false`` and why (:attr:`LogprobsFallback.reason`).

Either way the refusal is remembered for the provider+model (:class:`worker.capability.LogprobsMemo`),
so later jobs, on every worker, skip the refused request: ``preferred`` asks without logprobs at
once, ``required`` fails at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from types import TracebackType

import httpx

from .admit import Admitted
from .capability import LogprobsMemo
from .settings import Settings
from .upstream.adapters import Adapter, Parser
from .upstream.base import UpstreamError
from .upstream.classify import LOGPROBS_UNSUPPORTED
from .upstream.http import StreamLimits, open_sse

__all__ = ["LogprobsFallback"]


class LogprobsFallback:
    """Opens one attempt's stream; :attr:`parser` reads it once open. No I/O until :meth:`check`."""

    def __init__(
        self,
        admitted: Admitted,
        adapter: Adapter,
        *,
        http: httpx.AsyncClient,
        settings: Settings,
        limits: StreamLimits,
        memo: LogprobsMemo | None,
        key: str | None,
    ) -> None:
        self.admitted = admitted
        self.adapter = adapter
        self.http = http
        self.settings = settings
        self.limits = limits
        self.memo = memo
        self.key = key
        self.want = True  # whether the request asks for logprobs
        self.reason: str | None = None  # why it does not, once it does not
        self.parser: Parser = adapter.parser(admitted.job, logprobs=True)

    async def check(self) -> None:
        """Before the first request: a refusal remembered for this provider+model applies now."""
        if self.memo is None:
            return
        reason = await self.memo.refusal(self.admitted.provider_name, self.admitted.job.model)
        if reason is not None:
            self._without(f"{reason} (remembered)")

    def open(self) -> AbstractAsyncContextManager[AsyncIterator[str]]:
        """The stream's data events; raises :class:`UpstreamError` as :func:`open_sse` does."""
        return _Opened(self)

    async def _enter(
        self,
    ) -> tuple[AbstractAsyncContextManager[AsyncIterator[str]], AsyncIterator[str]]:
        """The request's :func:`open_sse`, entered (sent again without logprobs after a refusal),
        and its data events."""
        while True:
            job, adapter = self.admitted.job, self.adapter
            url, body = adapter.build_request(
                job,
                model_url=self.admitted.url,
                settings=self.settings,
                provider=self.admitted.provider,
                logprobs=self.want,
            )
            headers = {"Content-Type": "application/json", **adapter.headers(self.key)}
            opened = open_sse(self.http, url, body, headers, self.limits, event_prefix=adapter.event_prefix)
            try:
                events = await opened.__aenter__()
            except UpstreamError as exc:
                if exc.code != LOGPROBS_UNSUPPORTED or not self.want:
                    raise
                why = (
                    f"provider {self.admitted.provider_name!r} gives no logprobs for model "
                    f"{job.model!r}: {exc.message}"
                )
                if self.memo is not None:
                    await self.memo.remember(self.admitted.provider_name, job.model, why)
                self._without(why)
                continue
            self.parser = adapter.parser(job, logprobs=self.want)
            return opened, events

    def _without(self, reason: str) -> None:
        """Go on without logprobs (``preferred``), or fail (``required``)."""
        admitted = self.admitted
        if admitted.job.logprobs == "required":
            raise UpstreamError(
                LOGPROBS_UNSUPPORTED, f"the job requires logprobs (logprobs: required): {reason}"
            )
        self.want = False
        self.reason = reason


class _Opened:
    """:meth:`LogprobsFallback.open`: one request entered, exited as ``async with`` exits it (a
    class, not an exit stack in a generator: ~2 us less a request)."""

    __slots__ = ("fallback", "request")

    def __init__(self, fallback: LogprobsFallback) -> None:
        self.fallback = fallback
        self.request: AbstractAsyncContextManager[AsyncIterator[str]] | None = None

    async def __aenter__(self) -> AsyncIterator[str]:
        self.request, events = await self.fallback._enter()
        return events

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        request, self.request = self.request, None
        assert request is not None, "exited without being entered"
        return await request.__aexit__(kind, exc, tb)
