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
from .jobs import Job
from .keys import GROUP

__all__ = ["contract_view", "render_all", "stale_files", "write_all"]

_ID = "https://tokenwire.dev/schemas"


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
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{_ID}/job.schema.json",
        "title": "tokenwire job",
        "description": (
            "A generation job: the JSON held in the `job` field of an entry on the `{P}:jobs` stream. "
            "`input` is required for api `native` and `completions`, `messages` for `chat`."
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
            "`P:job:{JOB_ID}:events`. Exactly one terminal event (done, error, cancelled) ends a job."
        ),
        **schema,
    }


def asyncapi() -> dict[str, Any]:
    job, event = job_schema(), event_schema()
    job_defs = job.pop("$defs", {})
    event_defs = event.pop("$defs", {})
    schemas = {**job_defs, **event_defs}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "tokenwire",
            "version": "1",
            "description": (
                "Redis streams of tokenwire. `P` is the configured key prefix (default `tokenwire`). "
                "Entries carry one field: `job` on the job stream, `event` on event streams."
            ),
        },
        "defaultContentType": "application/json",
        "channels": {
            "jobs": {
                "address": "{P}:jobs",
                "description": (
                    f"The job stream (braces are a Redis Cluster hash tag). Workers read it through "
                    f"the consumer group `{GROUP}`; producers XADD entries with one field `job`."
                ),
                "messages": {"job": {"$ref": "#/components/messages/job"}},
            },
            "events": {
                "address": "P:job:{JOB_ID}:events",
                "description": (
                    "A job's event stream; entry ids are `<attempt>-<seq>`. Subscribers XREAD from `0` "
                    "(replay) or from the last id they saw (resume); a `start` with a higher attempt "
                    "means discard the earlier attempt's tokens."
                ),
                "parameters": {"JOB_ID": {"description": "The job's id."}},
                "messages": {"event": {"$ref": "#/components/messages/event"}},
            },
            "dead": {
                "address": "{P}:dead",
                "description": (
                    "Dead letters: entries with fields `entry`, `code`, `reason`, `consumer`, `ts`, "
                    "`job` (the original payload) and `job_id` when it was readable."
                ),
                "messages": {"deadLetter": {"$ref": "#/components/messages/deadLetter"}},
            },
        },
        "operations": {
            "enqueue": {"action": "send", "channel": {"$ref": "#/channels/jobs"}},
            "consumeJobs": {"action": "receive", "channel": {"$ref": "#/channels/jobs"}},
            "publishEvents": {"action": "send", "channel": {"$ref": "#/channels/events"}},
            "subscribeEvents": {"action": "receive", "channel": {"$ref": "#/channels/events"}},
            "readDeadLetters": {"action": "receive", "channel": {"$ref": "#/channels/dead"}},
        },
        "components": {
            "messages": {
                "job": {"name": "job", "payload": _rebase(job)},
                "event": {"name": "event", "payload": _rebase(event)},
                "deadLetter": {"name": "deadLetter", "payload": _dead_letter()},
            },
            "schemas": _rebase(schemas),
        },
    }


def _dead_letter() -> dict[str, Any]:
    fields = ["entry", "code", "reason", "consumer", "ts", "job", "job_id"]
    return {
        "type": "object",
        "properties": {name: {"type": "string"} for name in fields},
        "required": fields[:-1],
    }


def _rebase(node: Any) -> Any:
    """Point ``#/$defs/X`` references at AsyncAPI's ``#/components/schemas/X``."""
    if isinstance(node, dict):
        return {
            k: (v.replace("#/$defs/", "#/components/schemas/") if k == "$ref" else _rebase(v))
            for k, v in node.items()
            if k not in ("$schema", "$id")
        }
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
    }


def write_all(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_all().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
