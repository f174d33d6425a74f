"""What every adapter's request shares: the job's sampling params, the capped token limit, the URL.

One place for the three things every dialect writes into its request: which job params are sent
under their own names (:data:`SAMPLING`), the ``max_tokens`` the worker allows
(:func:`max_tokens`: the job's, else ``default_max_tokens``, never above ``max_tokens_cap``), and a
provider URL with ``{model}`` replaced by the job's model as URL path segments (:func:`with_model`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from worker.jobs import Job
from worker.settings import Settings
from worker.upstream.base import UpstreamError

__all__ = ["SAMPLING", "bearer", "max_tokens", "model_path", "sampling", "unsupported", "with_model"]

SAMPLING = (
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
)
"""Job params an OpenAI-style or TGI-style request sends under their own names."""


def bearer(key: str | None) -> dict[str, str]:
    """``Authorization: Bearer <key>`` (no header without a key): most providers' authentication."""
    return {} if key is None else {"Authorization": f"Bearer {key}"}


def max_tokens(job: Job, settings: Settings) -> int:
    """The request's token limit: the job's, else ``default_max_tokens``; at most ``max_tokens_cap``."""
    return min(job.params.max_tokens or settings.default_max_tokens, settings.max_tokens_cap)


def sampling(job: Job, names: tuple[str, ...] = SAMPLING) -> dict[str, Any]:
    """The params among ``names`` the job set, by name (unset ones are not sent)."""
    params = job.params
    return {name: value for name in names if (value := getattr(params, name)) is not None}


def unsupported(job: Job, api: str, names: tuple[str, ...]) -> None:
    """Refuse a job that sets a param the dialect has no field for: never dropped in silence."""
    found = [name for name in names if getattr(job.params, name) is not None]
    if found:
        raise UpstreamError(
            "bad_request",
            f"the {api} API has no {', '.join(f'`params.{n}`' for n in found)}: remove it from the job",
        )


def model_path(model: str) -> str:
    """The model name as URL path segments: slashes kept, the rest percent-encoded."""
    segments = model.split("/")
    if any(s in {".", ".."} for s in segments):
        raise UpstreamError("bad_request", f"invalid model name {model!r}")
    return quote(model, safe="/")


def with_model(url: str, model: str) -> str:
    """``url`` with ``{model}`` replaced by :func:`model_path` (URLs without one are kept)."""
    if "{model}" not in url:
        return url
    return url.replace("{model}", model_path(model))
