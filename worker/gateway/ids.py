"""Job ids as the gateway sees them: per-tenant scoping, and Redis stream ids from outside.

A job a tenant enqueues through the gateway runs under the *internal* id ``<tenant>/<id>`` (the
``job_id`` of its events and of its Redis keys ``P:job:{<tenant>/<id>}``); the tenant only ever
names it by its own ``id``. So two tenants posting the same id make two jobs, and nothing one does
can name, read or cancel the other's. A gateway id holds no ``/`` (a URL path segment, and the
separator), so an internal id is unambiguous. Jobs enqueued outside the gateway keep their own id
(no tenant on the state hash); only a ``read_unscoped`` tenant reads them, by that id. Such a job may
hold an id of the form ``<tenant>/<id>``; the tenant's own job ``<id>`` then runs as
``<tenant>/<id>/1`` (or ``/2``): every lookup checks the state hash's ``tenant``
(:func:`scoped_ids`), so the two never meet and the tenant learns nothing of the other.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "ALTERNATES",
    "MAX_JOB_ID",
    "MAX_STREAM_ID",
    "PUBLIC_ID",
    "STREAM_ID",
    "after_stream_id",
    "id_problem",
    "parse_stream_id",
    "scoped_id",
    "scoped_ids",
]

MAX_JOB_ID: Final = 128
"""The job schema's bound on an id; an internal id obeys it too."""

PUBLIC_ID: Final = re.compile(r"[A-Za-z0-9._:@+=-]{1,128}")
"""A job id in a gateway path (the job schema's characters, without ``/``)."""

STREAM_ID: Final = re.compile(r"(0|[1-9][0-9]{0,19})-(0|[1-9][0-9]{0,19})")
"""A Redis stream id ``<ms>-<seq>`` (decimal, each part below 2**64)."""

_U64: Final = 2**64

MAX_STREAM_ID: Final = f"{_U64 - 1}-{_U64 - 1}"
"""The largest stream id: none follows it (``XRANGE key (<it> +`` is an error in Redis)."""


ALTERNATES: Final = 2
"""How many other internal ids a tenant's job may take when ``<tenant>/<id>`` is already a job
enqueued outside the gateway (a raw id may hold a ``/``): ``<tenant>/<id>/1``, ``<tenant>/<id>/2``."""


def scoped_id(tenant: str, job_id: str) -> str:
    """The internal id of ``tenant``'s job ``job_id`` (unless that id was taken outside the gateway)."""
    return f"{tenant}/{job_id}"


def scoped_ids(tenant: str, job_id: str) -> list[str]:
    """Every internal id ``tenant``'s job ``job_id`` may run under, in the order they are tried: the
    first that is free or already this tenant's (its state hash's ``tenant``) is the job's."""
    first = scoped_id(tenant, job_id)
    return [first, *(f"{first}/{n}" for n in range(1, ALTERNATES + 1))]


def id_problem(tenant: str, job_id: str) -> str | None:
    """Why ``job_id`` cannot be a gateway job id of ``tenant``, or None."""
    if PUBLIC_ID.fullmatch(job_id) is None:
        return "`id`: 1-128 letters, digits or ._:@+=- (no '/', no spaces)"
    if job_id in (".", ".."):  # a URL path's dot segments: every client drops them from /v1/jobs/{id}
        return "`id`: '.' and '..' cannot be ids (a URL path drops them: /v1/jobs/../events is /v1/events)"
    room = MAX_JOB_ID - len(tenant) - 3  # "<tenant>/<id>/<n>" is a job id too
    if len(job_id) > room:
        return f"`id`: at most {room} characters for tenant {tenant!r} (the gateway scopes ids by tenant)"
    return None


def parse_stream_id(text: str) -> tuple[int, int] | None:
    """``(ms, seq)`` of a Redis stream id, or None for anything else (``-``/``+``/``$``, junk, overflow)."""
    if len(text) > 41:
        return None
    match = STREAM_ID.fullmatch(text)
    if match is None:
        return None
    ms, seq = int(match.group(1)), int(match.group(2))
    if ms >= _U64 or seq >= _U64:
        return None
    return ms, seq


def after_stream_id(header: str | None, query: str | None) -> tuple[str, str | None]:
    """The id to resume after (``Last-Event-ID`` wins over ``after``; ``0-0``, the start, without
    either) and a problem naming the bad one, or None."""
    for name, value in (("Last-Event-ID", header), ("after", query)):
        if value is None:
            continue
        value = value.strip()
        if not value:  # an empty header or parameter: as if absent
            continue
        parsed = parse_stream_id(value)
        if parsed is None:
            return "0-0", f"{name} is not a Redis stream id (<ms>-<seq>, as the `id:` lines carry)"
        return f"{parsed[0]}-{parsed[1]}", None
    return "0-0", None
