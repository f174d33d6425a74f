"""tokenwire: LLM token streams from a Redis job queue to per-job Redis event streams, one
confidence-scored event per token."""

from .client import Client, JobNotFound, Received, SubscriptionTimeout
from .events import (
    Cancelled,
    Done,
    Error,
    Escalation,
    Event,
    LowSpan,
    Start,
    Summary,
    Token,
    TopkMetrics,
    TopLogprob,
    Usage,
)
from .jobs import ChatMessage, Escalate, InvalidJob, Job, Params
from .service import Worker
from .settings import Provider, Settings, SettingsError, load_settings

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
    "InvalidJob",
    "Job",
    "JobNotFound",
    "LowSpan",
    "Params",
    "Provider",
    "Received",
    "Settings",
    "SettingsError",
    "Start",
    "SubscriptionTimeout",
    "Summary",
    "Token",
    "TopLogprob",
    "TopkMetrics",
    "Usage",
    "Worker",
    "__version__",
    "load_settings",
]
