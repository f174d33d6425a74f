"""``schemas/gateway.openapi.yaml``: the gateway's HTTP API as OpenAPI 3.1, generated from the code.

The bodies come from :mod:`worker.gateway.models` and the job schema (:func:`worker.schema.job_schema`,
the same one ``schemas/job.schema.json`` is, handed in by :mod:`worker.schema`, which imports this),
the id and resume-id patterns from :mod:`worker.gateway.ids`, the settings' defaults from
:class:`worker.settings.Settings`.
``tokenwire schema`` writes it with the other contract files; a test fails when it drifts, another
validates it (openapi-spec-validator) and drives the gateway from it (schemathesis).
"""

from __future__ import annotations

import copy
from typing import Any

import msgspec
import yaml

from ..settings import Settings
from .bounds import BODY_SECONDS
from .ids import PUBLIC_ID, STREAM_ID
from .models import CancelBody, Cancelled, Created, ErrorBody, JobState

__all__ = ["openapi", "render_openapi"]

_REF = "#/components/schemas/"


def _schemas(job_schema: dict[str, Any]) -> dict[str, Any]:
    job = copy.deepcopy(job_schema)
    defs: dict[str, Any] = dict(job.get("$defs", {}))
    _, components = msgspec.json.schema_components(
        [Created, JobState, CancelBody, Cancelled, ErrorBody], ref_template=_REF + "{name}"
    )
    defs.update(components)
    text = msgspec.json.encode(defs).decode().replace('"#/$defs/', f'"{_REF}')
    return dict(msgspec.json.decode(text))


def _error(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF + "ErrorBody"}}},
    }
    if retry_after:
        answer["headers"] = {
            "Retry-After": {
                "description": "seconds to wait",
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            }
        }
    return answer


def _json(ref: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": _REF + ref}}}}


_ID_PARAM: dict[str, Any] = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "the job's id as the tenant posted it (scoped per tenant: another tenant's id is 404)",
    "schema": {"type": "string", "pattern": f"^{PUBLIC_ID.pattern}$"},
}
_STREAM_ID_SCHEMA: dict[str, Any] = {"type": "string", "pattern": f"^{STREAM_ID.pattern}$"}
_KEY_OR_TOKEN: list[dict[str, list[str]]] = [{"bearer": []}, {"readToken": []}]
_COMMON = {
    "401": _error("no credentials, an unknown key, or a read token that is forged, expired or revoked"),
    "403": _error("a browser origin its tenant does not list (CORS)"),
    "404": _error("no such job for this tenant: never enqueued, expired, or another tenant's"),
    "503": _error("Redis is unavailable", retry_after=True),
}
_BODY = {  # the answers of an operation with a body (worker.gateway.bounds.read_body)
    "400": _error("the body cannot be read as its Content-Encoding or Transfer-Encoding describes it"),
    "408": _error(f"the body did not arrive within {BODY_SECONDS:g} s of the request's head"),
    "413": _error("the body is over max_payload_bytes"),
}


def openapi(job_schema: dict[str, Any]) -> dict[str, Any]:
    """The document, with ``job_schema`` (:func:`worker.schema.job_schema`) as the body of a job."""
    defaults = Settings()
    heartbeat = defaults.gateway_heartbeat_seconds
    events = {
        "get": {
            "operationId": "followJob",
            "summary": "Follow a job's events (server-sent events), from the start or after an id",
            "description": (
                "Each event: `id:` the Redis entry id, `event:` the event's type, `data:` the event JSON "
                "exactly as on the job's Redis stream. Without `Last-Event-ID` or `after` it replays from "
                "the start; it closes after the terminal event (`done`, `error`, `cancelled`). A comment "
                f"line is sent every `gateway_heartbeat_seconds` ({heartbeat:g} s by default) of silence. "
                "A client that falls behind by more than `gateway_buffer_bytes` is closed with a comment "
                "and resumes by id."
            ),
            "parameters": [
                _ID_PARAM,
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "description": "resume after this entry id (wins over `after`)",
                    "schema": _STREAM_ID_SCHEMA,
                },
                {
                    "name": "after",
                    "in": "query",
                    "required": False,
                    "description": "resume after this entry id (an EventSource cannot set headers at first)",
                    "schema": _STREAM_ID_SCHEMA,
                },
            ],
            "security": _KEY_OR_TOKEN,
            "responses": {
                "200": {
                    "description": "the event stream",
                    "headers": {
                        "Cache-Control": {"schema": {"type": "string", "const": "no-cache"}},
                        "X-Accel-Buffering": {"schema": {"type": "string", "const": "no"}},
                    },
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "400": _error("`Last-Event-ID` or `after` is not a Redis stream id"),
                **_COMMON,
                "429": _error("the tenant has max_streams streams open on this gateway", retry_after=True),
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tokenwire gateway",
            "version": "1",
            "description": (
                "Live, resumable, per-tenant token streams over HTTP (`tokenwire gateway`). A tenant "
                "authenticates with `Authorization: Bearer <key>` (configured as `[tenants.NAME]` with the "
                "key's SHA-256); a browser reads one job with its `read_token` as `?token=`."
            ),
        },
        "servers": [{"url": f"http://{defaults.gateway_host}:{defaults.gateway_port}"}],
        "paths": {
            "/v1/jobs": {
                "post": {
                    "operationId": "enqueueJob",
                    "summary": "Enqueue a job (the same id and body again is the same job)",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": _REF + "Job"}}},
                    },
                    "security": [{"bearer": []}],
                    "responses": {
                        "201": _json("Created", "enqueued"),
                        "200": _json("Created", "the same id and body again: the same answer"),
                        **_BODY,
                        "401": _COMMON["401"],
                        "403": _COMMON["403"],
                        "409": _error("the id names a different job of this tenant"),
                        "422": _error(
                            "an invalid job: the reason the worker would give; or an `id` the gateway "
                            "cannot scope to the tenant (one with a '/', or longer than 125 characters "
                            "less the tenant name's length)"
                        ),
                        "429": _error("the tenant has max_inflight_jobs jobs in flight", retry_after=True),
                        "503": _COMMON["503"],
                    },
                }
            },
            "/v1/jobs/{id}/events": events,
            "/v1/jobs/{id}": {
                "get": {
                    "operationId": "jobState",
                    "summary": "The job's state hash",
                    "parameters": [_ID_PARAM],
                    "security": _KEY_OR_TOKEN,
                    "responses": {"200": _json("JobState", "the job's state"), **_COMMON},
                }
            },
            "/v1/jobs/{id}/cancel": {
                "post": {
                    "operationId": "cancelJob",
                    "summary": "Cancel the job (queued: ends at once; running: its worker stops it)",
                    "parameters": [_ID_PARAM],
                    "requestBody": {
                        "required": False,
                        "content": {"application/json": {"schema": {"$ref": _REF + "CancelBody"}}},
                    },
                    "security": _KEY_OR_TOKEN,
                    "responses": {
                        "200": _json("Cancelled", "what the cancel did"),
                        **_BODY,
                        "422": _error('the body is not {"reason": "..."}'),
                        **_COMMON,
                    },
                }
            },
        },
        "components": {
            "schemas": _schemas(job_schema),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "a tenant's key"},
                "readToken": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "token",
                    "description": "a job's read token (from POST /v1/jobs): that job only, until it expires",
                },
            },
        },
    }


def render_openapi(job_schema: dict[str, Any]) -> str:
    return yaml.safe_dump(openapi(job_schema), sort_keys=True, allow_unicode=True, width=100)
