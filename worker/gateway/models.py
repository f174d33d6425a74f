"""The gateway's answers, as msgspec types: the API encodes them and the OpenAPI document
(:mod:`worker.gateway.openapi`) is generated from them."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = ["CancelBody", "Cancelled", "Created", "ErrorBody", "ErrorDetail", "JobState"]


class Created(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /v1/jobs``: the job's id (the tenant's own), where to follow it, a read token for it."""

    id: str
    events_url: str
    read_token: Annotated[str, msgspec.Meta(description="signed, expiring, for this job alone: ?token=")]


class JobState(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /v1/jobs/{id}``: the job's state hash as stored (``state``, ``attempt``, ``tenant``, …)."""

    id: str
    events_url: str
    state: dict[str, str]


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
