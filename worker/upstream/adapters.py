"""The adapter protocol and the table of dialects, keyed by job ``api``.

A dialect is one module with one adapter class; :data:`DIALECTS` is the one table that names it.
Every adapter builds its request over the shared helpers (:mod:`worker.upstream.request`), reads
its stream through the one SSE reader (:mod:`worker.upstream.http`) and raises the one error
classification (:mod:`worker.upstream.errors`, :mod:`worker.upstream.classify`). Each api needs a
provider URL setting ``<api>_url`` (:class:`worker.settings.Provider`) and its name in
``worker.jobs.Api`` (a test keeps the three in step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from worker.jobs import Job
from worker.settings import Provider, Settings
from worker.upstream.base import Parsed
from worker.upstream.chat import ChatAdapter
from worker.upstream.completions import CompletionsAdapter
from worker.upstream.gemini import GeminiAdapter
from worker.upstream.native import NativeAdapter
from worker.upstream.responses import ResponsesAdapter
from worker.upstream.sglang import SGLangAdapter

__all__ = ["DIALECTS", "Adapter", "Parser", "default_adapters"]


class Parser(Protocol):
    """Reads one stream: one SSE data payload at a time, in order (it may keep state)."""

    def parse(self, data: str) -> Parsed: ...


class Adapter(Protocol):
    """A provider protocol: how to ask for a stream and how to read its events.

    ``event_prefix``: the protocol names every SSE event with this prefix (the reader passes
    those and ``event: error`` on; ``None``: unnamed events only).
    ``build_request(..., logprobs=False)`` asks for no logprobs (a model that refuses them).
    """

    @property
    def api(self) -> str: ...

    @property
    def event_prefix(self) -> str | None: ...

    def build_request(
        self,
        job: Job,
        *,
        model_url: str,
        settings: Settings,
        provider: Provider,
        logprobs: bool = True,
    ) -> tuple[str, bytes]: ...

    def headers(self, key: str | None) -> dict[str, str]:
        """The request's authentication headers for ``key`` (none without one)."""
        ...

    def parser(self, job: Job, *, logprobs: bool = True) -> Parser: ...


DIALECTS: dict[str, Callable[[], Adapter]] = {
    "native": NativeAdapter,
    "chat": ChatAdapter,
    "completions": CompletionsAdapter,
    "responses": ResponsesAdapter,
    "gemini": GeminiAdapter,
    "sglang": SGLangAdapter,
}
"""Every dialect, by job ``api``: adding one is a new module and a line here."""


def default_adapters() -> dict[str, Adapter]:
    """One adapter per :data:`worker.jobs.API_NAMES` entry."""
    return {api: make() for api, make in DIALECTS.items()}
