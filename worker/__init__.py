"""tokenwire: LLM token streams from a Redis job queue to per-job Redis event streams, one
confidence-scored event per token.

A producer or subscriber needs only :class:`Client` (redis and msgspec): the worker's names
(``Worker``, ``Settings``, ...) are imported on first use, so ``from worker import Client`` loads no
HTTP client, no metrics and no logging library.
"""

import importlib
import typing

from .client import (
    Client,
    JobCancelled,
    JobConflict,
    JobFailed,
    JobNotFound,
    JobStatus,
    Received,
    SubscriptionTimeout,
)
from .events import (
    Cancelled,
    Done,
    Error,
    Escalation,
    Event,
    LowSpan,
    MalformedEvent,
    Start,
    Summary,
    Token,
    TopkMetrics,
    TopLogprob,
    UnknownEvent,
    Usage,
)
from .feedback import Feedback, FeedbackError
from .jobs import ChatMessage, Escalate, InvalidJob, Job, Params
from .signals import Signals

if typing.TYPE_CHECKING:
    from .service import Worker
    from .settings import Provider, Settings, SettingsError, load_settings

_LAZY: dict[str, str] = {
    "Provider": ".settings",
    "Settings": ".settings",
    "SettingsError": ".settings",
    "Worker": ".service",
    "load_settings": ".settings",
}
"""Names imported on first use (PEP 562), by the module that defines them."""


def __getattr__(name: str) -> typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__version__ = "0.1.0"

__all__ = [
    "Cancelled",
    "ChatMessage",
    "Client",
    "Done",
    "Error",
    "Escalate",
    "Escalation",
    "Event",
    "Feedback",
    "FeedbackError",
    "InvalidJob",
    "Job",
    "JobCancelled",
    "JobConflict",
    "JobFailed",
    "JobNotFound",
    "JobStatus",
    "LowSpan",
    "MalformedEvent",
    "Params",
    "Provider",
    "Received",
    "Settings",
    "SettingsError",
    "Signals",
    "Start",
    "SubscriptionTimeout",
    "Summary",
    "Token",
    "TopLogprob",
    "TopkMetrics",
    "UnknownEvent",
    "Usage",
    "Worker",
    "__version__",
    "load_settings",
]
