"""Admission: turn a job stream entry into a runnable job, or say precisely why it cannot run."""

from __future__ import annotations

import msgspec

from .jobs import InvalidJob, Job, decode_job, job_id_of
from .prices import price_for
from .routing import admission_problem
from .settings import Provider, Settings

__all__ = ["Admitted", "Rejected", "admit"]


class Admitted(msgspec.Struct, frozen=True):
    """A runnable job; ``stronger`` is where it escalates to when it is not confident enough."""

    job: Job
    job_id: str
    provider_name: str
    provider: Provider
    url: str
    stronger: Admitted | None = None


class Rejected(msgspec.Struct, frozen=True):
    """An entry that cannot run; ``job_id`` is set when the payload's id was readable."""

    code: str
    reason: str
    job_id: str | None = None


def admit(entry_id: str, payload: bytes | None, settings: Settings) -> Admitted | Rejected:
    """Validate one entry against the job schema and this worker's limits and providers.

    Total: whatever the entry holds, the answer is an :class:`Admitted` or a :class:`Rejected`,
    never an exception (one escaping here would crash the worker's read or reclaim loop)."""
    if payload is None:
        return Rejected("invalid_job", "the job stream entry has no `job` field")
    if not isinstance(payload, bytes):
        return Rejected("invalid_job", f"the job stream entry's `job` field is {type(payload).__name__}")
    try:
        return _admit(entry_id, payload, settings)
    except Exception as exc:  # a bug, not the payload's fault as far as we know: still no crash
        reason = f"job could not be admitted ({type(exc).__name__}: {exc})"[:500]
        return Rejected("invalid_job", reason, job_id_of(payload, entry_id))


def _admit(entry_id: str, payload: bytes, settings: Settings) -> Admitted | Rejected:
    if len(payload) > settings.max_payload_bytes:
        return Rejected(
            "payload_too_large",
            f"job payload is {len(payload)} bytes, over max_payload_bytes={settings.max_payload_bytes}",
            job_id_of(payload, entry_id),
        )
    try:
        job = decode_job(payload)
    except InvalidJob as exc:
        return Rejected("invalid_job", exc.reason, exc.job_id)
    job_id = job.id or entry_id
    problem = _check_limits(job, settings)
    if problem is not None:
        return Rejected(problem[0], problem[1], job_id)
    target = _resolve(job, job_id, job.provider or settings.default_provider, settings)
    if isinstance(target, Rejected) or job.escalate is None:
        return target
    esc = job.escalate
    routing_problem = admission_problem(job, target.provider_name, target.provider)
    if routing_problem is not None:
        return Rejected("invalid_job", routing_problem, job_id)
    strong_job = msgspec.structs.replace(job, model=esc.model, provider=esc.provider, escalate=None)
    stronger = _resolve(strong_job, job_id, esc.provider or target.provider_name, settings)
    if isinstance(stronger, Rejected):
        return Rejected(stronger.code, f"escalate: {stronger.reason}", job_id)
    return msgspec.structs.replace(target, stronger=stronger)


def _resolve(job: Job, job_id: str, provider_name: str, settings: Settings) -> Admitted | Rejected:
    provider = settings.all_providers().get(provider_name)
    if provider is None:
        known = ", ".join(sorted(settings.all_providers()))
        return Rejected("unknown_provider", f"unknown provider {provider_name!r} (known: {known})", job_id)
    url = provider.url_for(job.api)
    if url is None:
        return Rejected(
            "unsupported_api",
            f"provider {provider_name!r} has no {job.api}_url configured for api {job.api!r}",
            job_id,
        )
    if job.budget is not None and price_for(provider, job.model) is None:
        return Rejected(
            "invalid_job",
            f"the job sets a budget, but provider {provider_name!r} has no price for model {job.model!r} "
            f"(set [providers.{provider_name}.prices] for it, or '*')",
            job_id,
        )
    return Admitted(job, job_id, provider_name, provider, url)


def _check_limits(job: Job, settings: Settings) -> tuple[str, str] | None:
    if job.prompt_chars > settings.max_input_chars:
        return (
            "input_too_large",
            f"prompt is {job.prompt_chars} characters, over max_input_chars={settings.max_input_chars}",
        )
    max_tokens = job.params.max_tokens
    if max_tokens is not None and max_tokens > settings.max_tokens_cap:
        return (
            "max_tokens_above_cap",
            f"params.max_tokens={max_tokens} is over max_tokens_cap={settings.max_tokens_cap}",
        )
    return None
