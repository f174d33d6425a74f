"""The adapter protocol and the built-in adapters, keyed by job ``api``."""

from __future__ import annotations

from typing import Protocol

from worker.jobs import Job
from worker.settings import Provider, Settings
from worker.upstream.base import Parsed
from worker.upstream.chat import ChatAdapter
from worker.upstream.completions import CompletionsAdapter
from worker.upstream.native import NativeAdapter

__all__ = ["Adapter", "default_adapters"]


class Adapter(Protocol):
    """A provider protocol: how to ask for a stream and how to read its events."""

    def build_request(
        self, job: Job, *, model_url: str, settings: Settings, provider: Provider
    ) -> tuple[str, bytes]: ...

    def parse(self, data: str) -> Parsed: ...


def default_adapters() -> dict[str, Adapter]:
    """One adapter per :data:`worker.jobs.API_NAMES` entry."""
    return {"native": NativeAdapter(), "chat": ChatAdapter(), "completions": CompletionsAdapter()}
