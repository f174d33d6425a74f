"""The gateway's answers, as msgspec types: the API encodes them and the OpenAPI document
(:mod:`worker.gateway.openapi`) is generated from them."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = ["CancelBody", "Cancelled", "Created", "ErrorBody", "ErrorDetail", "JobState", "StateName"]


class Created(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /v1/jobs``: the job's id (the tenant's own), where to follow it, a read token for it."""

    id: str
    events_url: str
    read_token: Annotated[str, msgspec.Meta(description="signed, expiring, for this job alone: ?token=")]


StateName = Literal["queued", "running", "done", "error", "cancelled"]
"""A job's state as ``GET /v1/jobs/{id}`` answers it."""


class JobState(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /v1/jobs/{id}``: what a product shows of a job, and nothing else of its state hash (not
    the worker running it, its queue entry, its events' fencing ids, digests, tokens of the
    hand-back, the tenant, the provider). Times are milliseconds since the Unix epoch; a field the
    job has not reached (or that does not apply to how it ended) is ``null``."""

    id: str
    events_url: str
    state: Annotated[StateName, msgspec.Meta(description="done, error and cancelled are terminal")]
    attempt: Annotated[
        int, msgspec.Meta(ge=0, description="the attempt running (or last run), from 1; 0 before the first")
    ]
    model: Annotated[str | None, msgspec.Meta(description="the model of that attempt")] = None
    created: int | None = None
    started: Annotated[int | None, msgspec.Meta(description="when that attempt started")] = None
    finished: Annotated[int | None, msgspec.Meta(description="when the job ended")] = None
    tokens: Annotated[int | None, msgspec.Meta(description="token events of the last attempt")] = None
    finish_reason: Annotated[str | None, msgspec.Meta(description="done: the model's finish reason")] = None
    confidence: Annotated[float | None, msgspec.Meta(description="done: the answer's confidence")] = None
    escalated_from: Annotated[
        str | None, msgspec.Meta(description="done: the model an escalated answer replaced")
    ] = None
    error_code: Annotated[str | None, msgspec.Meta(description="error: the error event's code")] = None
    cancel_reason: Annotated[
        str | None, msgspec.Meta(description="a cancellation was asked for, with this reason")
    ] = None


class CancelBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/jobs/{id}/cancel``'s optional body."""

    reason: Annotated[str, msgspec.Meta(max_length=500)] = "cancelled by request"


class Cancelled(msgspec.Struct, frozen=True, kw_only=True):
    """``cancelled`` (it had not started), ``requested`` (its worker is told), ``terminal`` (it had ended)."""

    id: str
    outcome: Literal["cancelled", "requested", "terminal"]


class ErrorDetail(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    message: str


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """Every error: a code (``unauthorized``, ``not_found``, ``conflict``, ``too_many_jobs``, the
    worker's admission code for a ``422``, …) and a message naming what was wrong."""

    error: ErrorDetail
