"""Stall detection for one upstream stream: no bytes for ``seconds`` while the reader waits for them.

A per-read timeout (httpx's ``read``) does the same job, but on aiohttp it re-arms a timer for every
chunk, and a provider sends a chunk per token: at 1,000 streams that was a tenth of a worker's CPU.
The guard instead reads the loop's clock when bytes arrive and keeps one timer per stream, re-armed
at most once per ``seconds``. Time the consumer spends holding an event (waiting for room to publish
under backpressure) is not the upstream's silence and never counts as a stall.

When the timer finds the reader waiting and nothing arrived for ``seconds``, it cancels the reading
task through an :func:`asyncio.timeout`; :meth:`StallGuard.watching` turns that into an
:class:`UpstreamError` (``upstream_stalled``, retryable). A stall is reported ``seconds`` after the
last byte, or up to ``seconds`` later when the consumer held an event while the timer fired.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from worker.upstream.base import UpstreamError

__all__ = ["StallGuard"]


class StallGuard:
    """Watches one stream; call :meth:`progress` when bytes arrive, and :meth:`hold` /
    :meth:`resume` around the time the consumer has an event."""

    __slots__ = ("_handle", "_loop", "_since", "_timeout", "_waiting", "host", "seconds", "stalled")

    def __init__(self, seconds: float, host: str) -> None:
        self.seconds = seconds
        self.host = host
        self.stalled = False
        self._waiting = True
        self._since = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeout: asyncio.Timeout | None = None
        self._handle: asyncio.TimerHandle | None = None

    def progress(self) -> None:
        """Bytes arrived."""
        if self._loop is not None:
            self._since = self._loop.time()

    def hold(self) -> None:
        """The consumer has an event: until :meth:`resume`, silence is not the upstream's fault."""
        self._waiting = False

    def resume(self) -> None:
        """The consumer wants the next event: the reader waits for bytes from now."""
        self._waiting = True
        if self._loop is not None:
            self._since = self._loop.time()

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[StallGuard]:
        """Run the body under the guard; a stall ends it with ``UpstreamError("upstream_stalled")``."""
        loop = self._loop = asyncio.get_running_loop()
        self._since = loop.time()
        self._waiting = True
        try:
            async with asyncio.timeout(None) as timeout:
                self._timeout = timeout
                self._handle = loop.call_at(self._since + self.seconds, self._check)
                try:
                    yield self
                finally:
                    self._handle.cancel()
        except TimeoutError:
            if not self.stalled:
                raise
            message = f"upstream {self.host} sent no data for {self.seconds:g}s: stalled"
            raise UpstreamError("upstream_stalled", message, retryable=True) from None

    def _check(self) -> None:
        loop, timeout = self._loop, self._timeout
        assert loop is not None and timeout is not None
        now = loop.time()
        due = self._since + self.seconds
        if not self._waiting:
            self._handle = loop.call_at(now + self.seconds, self._check)
        elif now < due:
            self._handle = loop.call_at(due, self._check)
        else:
            self.stalled = True
            timeout.reschedule(now)  # cancels the reading task now; watching() reports the stall
