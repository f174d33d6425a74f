"""The worker's upstream HTTP client: :class:`~worker.upstream.http.UpstreamClient` (no cookies)
whose streaming requests skip httpx's per-request layers when they would do nothing
(:mod:`worker.fastpath.httpx_send`); every other request is httpx's own."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx

from worker.fastpath import httpx_send
from worker.upstream.http import UpstreamClient

__all__ = ["FastUpstreamClient"]


class FastUpstreamClient(UpstreamClient):
    def stream(  # type: ignore[override]
        self, method: str, url: httpx.URL | str, **kwargs: Any
    ) -> AbstractAsyncContextManager[httpx.Response]:
        fast = httpx_send.stream(self, method, url, **kwargs)
        return fast if fast is not None else super().stream(method, url, **kwargs)
