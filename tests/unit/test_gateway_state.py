"""``GET /v1/jobs/{id}``'s answer (worker/gateway/state.py): the state hash's public fields alone,
each value checked; nothing a worker writes for itself reaches a read token's holder."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from worker.gateway.models import JobState
from worker.gateway.state import PUBLIC_FIELDS, STATES, job_state

INTERNAL = {"owner", "entry", "terminal_id", "job_sha256", "handback", "tenant", "provider", "api"}
SCRIPTS = Path(__file__).resolve().parents[2] / "worker" / "scripts.py"


def _answer(hash_: dict[str, str]) -> JobState | None:
    return job_state("j", [hash_.get(f) for f in PUBLIC_FIELDS])


def test_no_internal_field_is_read_or_answered() -> None:
    assert not INTERNAL & set(PUBLIC_FIELDS)
    # every field the workers' scripts set on a job's state hash is either public or internal
    calls = re.findall(r"'HSET(?:NX)?', KEYS\[1\],([^)]*)\)", SCRIPTS.read_text(), flags=re.S)
    written = {name for call in calls for name in re.findall(r"'([a-z_]+)'", call)}
    assert {"state", "owner", "entry", "terminal_id", "finished"} <= written, written
    answer = _answer({f: "1" for f in [*PUBLIC_FIELDS, *INTERNAL, *written]} | {"state": "running"})
    assert answer is not None
    encoded = msgspec.json.decode(msgspec.json.encode(answer))
    assert set(encoded) == set(JobState.__struct_fields__)
    assert not INTERNAL & set(encoded)


def test_values_are_parsed_and_junk_is_null() -> None:
    answer = _answer(
        {
            "state": "done",
            "attempt": "2",
            "created": "1700000000000",
            "started": "-5",
            "finished": "12x",
            "tokens": "9" * 30,
            "confidence": "nan",
            "finish_reason": "stop",
            "model": "m" * 2000,
            "cancel": "user pressed stop",
        }
    )
    assert answer is not None
    assert (answer.state, answer.attempt, answer.created) == ("done", 2, 1700000000000)
    assert answer.started is None and answer.finished is None and answer.tokens is None
    assert answer.confidence is None and answer.finish_reason == "stop"
    assert answer.model is not None and len(answer.model) == 500
    assert answer.cancel_reason == "user pressed stop" and answer.error_code is None
    assert _answer({"state": "queued"}) == JobState(
        id="j", events_url="/v1/jobs/j/events", state="queued", attempt=0
    )
    scored = _answer({"state": "done", "confidence": "0.25"})
    assert scored is not None and scored.confidence == 0.25


def test_a_hash_without_a_known_state_is_no_job() -> None:
    assert {"queued", "running", "done", "error", "cancelled"} == STATES
    assert _answer({}) is None and _answer({"state": "weird", "attempt": "1"}) is None
