"""The language-neutral contract in ``schemas/``, generated from the msgspec types.

``tokenwire schema`` writes the files; a test fails when they drift from the code.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import msgspec
import yaml

from .events import Event
from .feedback import FEEDBACK_MAXLEN, Feedback
from .jobs import MESSAGE_APIS, Job
from .keys import GROUP, REVIEW_GROUP, Keys, cancel_message
from .review import REVIEW_MAXLEN, ReviewItem

__all__ = ["CANCEL_MESSAGE_PATTERN", "contract_view", "render_all", "stale_files", "write_all"]

_ID = "https://tokenwire.dev/schemas"

# What ``Job.__post_init__`` checks, which msgspec cannot write into a schema: ``chat``,
# ``responses`` and ``gemini`` take ``messages``; every other api (``native`` is the default) takes
# ``input``. Null counts as absent.
_JOB_API_RULE: dict[str, Any] = {
    "if": {"required": ["api"], "properties": {"api": {"enum": sorted(MESSAGE_APIS)}}},
    "then": {
        "required": ["messages"],
        "properties": {"messages": {"type": "array"}, "input": {"type": "null"}},
    },
    "else": {
        "required": ["input"],
        "properties": {"input": {"type": "string"}, "messages": {"type": "null"}},
    },
}

# What ``Escalate.__post_init__`` and the margin rule of ``Job.__post_init__`` check: ``q`` goes only
# with signal ``quantile``, ``window`` only with ``window_min``, ``after_tokens`` never with
# ``agreement``; ``margin`` needs ``params.top_logprobs`` of 2 or more.
_ESCALATE_RULES: list[dict[str, Any]] = [
    *(
        {
            "if": {"required": [name], "properties": {name: {"not": {"type": "null"}}}},
            "then": {"required": ["signal"], "properties": {"signal": {"const": signal}}},
        }
        for name, signal in (("q", "quantile"), ("window", "window_min"))
    ),
    {
        "if": {"required": ["after_tokens"], "properties": {"after_tokens": {"not": {"type": "null"}}}},
        "then": {"properties": {"signal": {"not": {"const": "agreement"}}}},
    },
]
_JOB_MARGIN_RULE: dict[str, Any] = {
    "if": {
        "required": ["escalate"],
        "properties": {
            "escalate": {
                "type": "object",
                "required": ["signal"],
                "properties": {"signal": {"const": "margin"}},
            }
        },
    },
    "then": {
        "required": ["params"],
        "properties": {
            "params": {
                "required": ["top_logprobs"],
                "properties": {"top_logprobs": {"type": "integer", "minimum": 2}},
            }
        },
    },
}

# What the candidates rules of ``Job.__post_init__`` check: escalate.signal ``agreement`` needs
# ``candidates.n`` of 2 or more; ``candidates.rank_by: margin`` needs ``params.top_logprobs`` >= 2.
_JOB_CANDIDATES_RULES: list[dict[str, Any]] = [
    {
        "if": {
            "required": ["escalate"],
            "properties": {
                "escalate": {
                    "type": "object",
                    "required": ["signal"],
                    "properties": {"signal": {"const": "agreement"}},
                }
            },
        },
        "then": {
            "required": ["candidates"],
            "properties": {
                "candidates": {
                    "type": "object",
                    "required": ["n"],
                    "properties": {"n": {"type": "integer", "minimum": 2}},
                }
            },
        },
    },
    {
        "if": {
            "required": ["candidates"],
            "properties": {
                "candidates": {
                    "type": "object",
                    "required": ["rank_by"],
                    "properties": {"rank_by": {"const": "margin"}},
                }
            },
        },
        "then": _JOB_MARGIN_RULE["then"],
    },
]

_WORKER_ALONE = (
    "The worker alone checks what depends on its settings: the payload's size (`max_payload_bytes`), "
    "the prompt's length (`max_input_chars`), `params.max_tokens` against `max_tokens_cap`, and "
    "whether `provider` and `escalate.provider` name a configured provider that serves the job's api, "
    "and whether the provider of a native job whose `escalate.signal` is `margin` sends top-k "
    "alternatives. "
    "It also rejects two things JSON Schema cannot express: an integer written with a fraction or an "
    "exponent (`5.0`, `5e0`; write `5`), and text that is not I-JSON (RFC 7493: UTF-8, no lone "
    "surrogates)."
)

# The AsyncAPI document's notation for addresses: every `{name}` in an address is a parameter whose
# value is substituted as is, so the Redis Cluster hash-tag braces belong to the values.
_PARAMETERS: dict[str, dict[str, Any]] = {
    "prefix": {
        "description": "The key prefix (setting `prefix`).",
        "default": "tokenwire",
        "examples": ["tokenwire"],
    },
    "prefixTag": {
        "description": (
            "The key prefix as a Redis Cluster hash tag: `{`, the prefix, `}` (the braces are part "
            "of the value), so the job stream and the dead-letter stream share one slot."
        ),
        "default": "{tokenwire}",
        "examples": ["{tokenwire}"],
    },
    "jobIdTag": {
        "description": (
            "The job's id as a Redis Cluster hash tag: `{`, the id, `}` (the braces are part of the "
            "value), so a job's state hash `<prefix>:job:<jobIdTag>` and its event stream share one slot."
        ),
        "examples": ["{3f2a9c0d41b24e7c}"],
    },
}


def _cleaned(node: Any) -> Any:
    """Descriptions dedented here (``inspect.cleandoc``), not as msgspec's release of the day does it,
    so the generated files do not change with msgspec's docstring handling."""
    if isinstance(node, dict):
        return {
            k: inspect.cleandoc(v) if k == "description" and isinstance(v, str) else _cleaned(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_cleaned(v) for v in node]
    return node


def contract_view(node: Any) -> Any:
    """What a schema file means: its structure, with white space in descriptions folded."""
    if isinstance(node, dict):
        return {
            k: " ".join(v.split()) if k == "description" and isinstance(v, str) else contract_view(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [contract_view(v) for v in node]
    return node


def _parse(name: str, text: str) -> Any:
    return yaml.safe_load(text) if name.endswith((".yaml", ".yml")) else json.loads(text)


def stale_files(directory: Path) -> list[str]:
    """The generated files in ``directory`` whose contract differs from the code's (missing,
    unreadable, or another meaning; a change of white space in a description is not a change)."""
    stale = []
    for name, text in render_all().items():
        path = directory / name
        try:
            current = _parse(name, path.read_text("utf-8"))
        except (OSError, ValueError, yaml.YAMLError):
            stale.append(name)
            continue
        if contract_view(current) != contract_view(_parse(name, text)):
            stale.append(name)
    return stale


def job_schema() -> dict[str, Any]:
    schema = _cleaned(msgspec.json.schema(Job))
    job = schema["$defs"]["Job"]
    assert not {"if", "then", "else"} & job.keys(), "msgspec now writes conditionals: merge them"
    job.update(_JOB_API_RULE)
    assert "allOf" not in job and "allOf" not in schema["$defs"]["Escalate"], "merge the allOf"
    job["allOf"] = [_JOB_MARGIN_RULE, *_JOB_CANDIDATES_RULES]
    schema["$defs"]["Escalate"]["allOf"] = _ESCALATE_RULES
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{_ID}/job.schema.json",
        "title": "tokenwire job",
        "description": (
            "A generation job: the JSON held in the `job` field of an entry on the job stream "
            "(channel `jobs` of asyncapi.yaml). Api `native` (the default), `completions` and `sglang` "
            "take `input` and no `messages`; `chat`, `responses` and `gemini` take `messages` and no "
            "`input` (null counts as absent). " + _WORKER_ALONE
        ),
        **schema,
    }


def event_schema() -> dict[str, Any]:
    schema = _cleaned(msgspec.json.schema(Event))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{_ID}/event.schema.json",
        "title": "tokenwire event",
        "description": (
            "One event: the JSON held in the `event` field of an entry on a job's event stream "
            "(channel `events` of asyncapi.yaml). Exactly one terminal event (done, error, cancelled) "
            "ends a job."
        ),
        **schema,
    }


def asyncapi() -> dict[str, Any]:
    job, event = job_schema(), event_schema()
    job_defs = job.pop("$defs", {})
    event_defs = event.pop("$defs", {})
    feedback = _cleaned(msgspec.json.schema(Feedback))
    review = _cleaned(msgspec.json.schema(ReviewItem))
    schemas = {**job_defs, **event_defs, **feedback.pop("$defs", {}), **review.pop("$defs", {})}
    example = Keys("tokenwire")
    return {
        "asyncapi": "3.1.0",
        "info": {
            "title": "tokenwire",
            "version": "1",
            "description": (
                "Redis streams and the pub/sub channel of tokenwire. Addresses are Redis key and "
                "channel names; every `{name}` in an address is a parameter, substituted as is, so "
                "the Redis Cluster hash-tag braces are part of the values of `prefixTag` and "
                f"`jobIdTag`. With the default prefix: `{example.jobs}`, `{example.dead}`, "
                f"`{example.events('ID')}` and `{example.cancel}`. Stream entries carry one field: "
                "`job` on the job stream, `event` on event streams."
            ),
        },
        "defaultContentType": "application/json",
        "channels": {
            "jobs": {
                "address": "{prefixTag}:jobs",
                "description": (
                    f"The job stream. Workers read it through the consumer group `{GROUP}`; producers "
                    "XADD entries with one field `job`."
                ),
                "parameters": {"prefixTag": {"$ref": "#/components/parameters/prefixTag"}},
                "messages": {"job": {"$ref": "#/components/messages/job"}},
            },
            "events": {
                "address": "{prefix}:job:{jobIdTag}:events",
                "description": (
                    "A job's event stream; entry ids are `<attempt>-<seq>`. Subscribers XREAD from `0` "
                    "(replay) or from the last id they saw (resume); a `start` with a higher attempt "
                    "means discard the earlier attempt's tokens."
                ),
                "parameters": {
                    "prefix": {"$ref": "#/components/parameters/prefix"},
                    "jobIdTag": {"$ref": "#/components/parameters/jobIdTag"},
                },
                "messages": {"event": {"$ref": "#/components/messages/event"}},
            },
            "dead": {
                "address": "{prefixTag}:dead",
                "description": (
                    "Dead letters: entries with fields `entry`, `code`, `reason`, `consumer`, `ts`, "
                    "`job` (the original payload) and `job_id` when it was readable."
                ),
                "parameters": {"prefixTag": {"$ref": "#/components/parameters/prefixTag"}},
                "messages": {"deadLetter": {"$ref": "#/components/messages/deadLetter"}},
            },
            "feedback": {
                "address": "{prefixTag}:feedback",
                "description": (
                    "Ground truth for calibration: one entry per judgement of a job's answer, with one "
                    "field `feedback` (`Client.feedback`, `tokenwire feedback`, `tokenwire review "
                    "resolve`). Capped at about "
                    f"{FEEDBACK_MAXLEN:,} entries (XADD MAXLEN ~); readers (`tokenwire calibrate`) keep the "
                    "last judgement of each job id."
                ),
                "parameters": {"prefixTag": {"$ref": "#/components/parameters/prefixTag"}},
                "messages": {"feedback": {"$ref": "#/components/messages/feedback"}},
            },
            "review": {
                "address": "{prefixTag}:review",
                "description": (
                    "The review queue: one entry per job whose `done.verdict` is `review`, added by the "
                    "worker after the job's `done` (once per job: the script that adds it records the "
                    "entry on the job's marker `{prefixTag}:review:job:<id>`). Reviewers read it "
                    f"through the consumer group `{REVIEW_GROUP}` (`Client.take_reviews`, `tokenwire "
                    "review take`) and resolve entries by job id (`Client.resolve`, `tokenwire review "
                    "resolve`: the judgement goes to the feedback channel, the entry is acknowledged "
                    "and stays until trimmed). Capped at about "
                    f"{REVIEW_MAXLEN:,} entries by default (setting `review_maxlen`; XADD MAXLEN ~)."
                ),
                "parameters": {"prefixTag": {"$ref": "#/components/parameters/prefixTag"}},
                "messages": {"reviewEntry": {"$ref": "#/components/messages/reviewEntry"}},
            },
            "cancel": {
                "address": "{prefix}:cancel",
                "description": (
                    "Cancellation requests, a Redis pub/sub channel (PUBLISH, not a stream). A "
                    "producer first flags the job's state hash (`Client.cancel`, `tokenwire cancel`: "
                    "a queued job then ends at once), then publishes; the worker holding the job "
                    "closes its upstream request and writes `cancelled` with the reason."
                ),
                "parameters": {"prefix": {"$ref": "#/components/parameters/prefix"}},
                "messages": {"cancel": {"$ref": "#/components/messages/cancel"}},
            },
        },
        "operations": {
            "enqueue": {"action": "send", "channel": {"$ref": "#/channels/jobs"}},
            "consumeJobs": {"action": "receive", "channel": {"$ref": "#/channels/jobs"}},
            "publishEvents": {"action": "send", "channel": {"$ref": "#/channels/events"}},
            "subscribeEvents": {"action": "receive", "channel": {"$ref": "#/channels/events"}},
            "readDeadLetters": {"action": "receive", "channel": {"$ref": "#/channels/dead"}},
            "recordFeedback": {"action": "send", "channel": {"$ref": "#/channels/feedback"}},
            "readFeedback": {"action": "receive", "channel": {"$ref": "#/channels/feedback"}},
            "putOnReview": {"action": "send", "channel": {"$ref": "#/channels/review"}},
            "takeReviews": {"action": "receive", "channel": {"$ref": "#/channels/review"}},
            "requestCancel": {"action": "send", "channel": {"$ref": "#/channels/cancel"}},
            "listenForCancel": {"action": "receive", "channel": {"$ref": "#/channels/cancel"}},
        },
        "components": {
            "parameters": _PARAMETERS,
            "messages": {
                "job": {"name": "job", "payload": _rebase(job)},
                "event": {"name": "event", "payload": _rebase(event)},
                "deadLetter": {"name": "deadLetter", "payload": _dead_letter()},
                "feedback": {"name": "feedback", "payload": _rebase(feedback)},
                "reviewEntry": {"name": "reviewEntry", "payload": _review_entry()},
                "cancel": {"name": "cancel", "contentType": "text/plain", "payload": _cancel_message()},
            },
            "schemas": _rebase(schemas),
        },
    }


def _review_entry() -> dict[str, Any]:
    def json_of(name: str, what: str) -> dict[str, Any]:
        return {
            "type": "string",
            "contentMediaType": "application/json",
            "description": f"{what}: a `{name}` (components/schemas/{name}) as JSON.",
        }

    return {
        "type": "object",
        "description": "A review entry's fields (Redis stream fields are strings).",
        "properties": {
            "job_id": {"type": "string", "description": "The job's id."},
            "model": {"type": "string", "description": "The model that produced the answer."},
            "signals": json_of("Signals", "What feedback records about the answer"),
            "item": json_of("ReviewItem", "The whole entry"),
        },
        "required": ["job_id", "model", "signals", "item"],
    }


def _dead_letter() -> dict[str, Any]:
    fields = ["entry", "code", "reason", "consumer", "ts", "job", "job_id"]
    return {
        "type": "object",
        "properties": {name: {"type": "string"} for name in fields},
        "required": fields[:-1],
    }


CANCEL_MESSAGE_PATTERN = r"^[A-Za-z0-9._:@/+=-]{1,128}\n"
"""What a message on the cancel channel starts with: a job id (as the job schema allows), a newline."""


def _cancel_message() -> dict[str, Any]:
    return {
        "type": "string",
        "pattern": CANCEL_MESSAGE_PATTERN,
        "description": (
            "UTF-8 text: the job's id, a newline, the reason, which the `cancelled` event carries "
            "(it may be empty or span lines)."
        ),
        "examples": [cancel_message("3f2a9c0d41b24e7c", "user pressed stop")],
    }


def _rebase(node: Any) -> Any:
    """A JSON Schema as an AsyncAPI schema: ``#/$defs/X`` references point at
    ``#/components/schemas/X``, and msgspec's OpenAPI-style ``discriminator`` object becomes the
    property name AsyncAPI takes (each branch's ``type`` enum already tells the branches apart)."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k in ("$schema", "$id"):
                continue
            if k == "$ref":
                out[k] = v.replace("#/$defs/", "#/components/schemas/")
            elif k == "discriminator" and isinstance(v, dict) and "propertyName" in v:
                out[k] = v["propertyName"]
            else:
                out[k] = _rebase(v)
        return out
    if isinstance(node, list):
        return [_rebase(v) for v in node]
    return node


def render_all() -> dict[str, str]:
    """File name → exact file content."""
    enc = msgspec.json.Encoder(order="sorted")
    return {
        "job.schema.json": msgspec.json.format(enc.encode(job_schema()), indent=2).decode() + "\n",
        "event.schema.json": msgspec.json.format(enc.encode(event_schema()), indent=2).decode() + "\n",
        "asyncapi.yaml": yaml.safe_dump(asyncapi(), sort_keys=True, allow_unicode=True, width=100),
        "gateway.openapi.yaml": _gateway_openapi(),
    }


def _gateway_openapi() -> str:
    from .gateway.openapi import render_openapi  # the gateway's HTTP API (issue 14)

    return render_openapi(job_schema())


def write_all(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_all().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
