"""Admission is total: no payload, however hostile, makes decode_job, job_id_of, admit or the
exhausted-deliveries path raise anything but their documented types (InvalidJob for decode_job;
a str for job_id_of; Admitted | Rejected for admit). Examples of each class, then hypothesis over
arbitrary bytes and arbitrary (deeply) nested JSON; the runner's paths on fakeredis."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.admit import Admitted, Rejected, admit
from worker.events import decode_event, event_type
from worker.jobs import InvalidJob, decode_job, job_id_of
from worker.keys import Keys, as_text
from worker.publisher import Publisher
from worker.queue import Delivery, JobQueue
from worker.runner import Runner
from worker.settings import Provider, Settings
from worker.store import JobStore
from worker.upstream.adapters import default_adapters

SETTINGS = Settings(
    prefix="t",
    default_provider="up",
    providers={"up": Provider(native_url="https://up.test/v1/inference/{model}")},
    max_deliveries=3,
)
HEAD = b'{"id":"d","model":"m","input":"x",'


def nest(depth: int, inner: bytes = b"1", opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * depth + inner + closer * depth


def deep_object(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


# (payload, the id a reader can still trust, or None)
HOSTILE: dict[str, tuple[Any, str | None]] = {
    "deep array in an unknown field": (HEAD + b'"z":' + nest(1000) + b"}", "d"),
    "deep array before the id": (b'{"z":' + nest(40_000) + b',"id":"d","model":"m","input":"x"}', None),
    "deep array, the id after it": (b'{"model":"m","z":' + nest(1000) + b',"id":"d"}', "d"),
    "deep object in an unknown field": (HEAD + b'"z":' + deep_object(2000) + b"}", "d"),
    "deep in params": (HEAD + b'"params":{"stop":' + nest(1500) + b"}}", "d"),
    "deep in metadata": (HEAD + b'"metadata":{"k":' + deep_object(1500) + b"}}", "d"),
    "deep in messages": (b'{"id":"d","model":"m","api":"chat","messages":' + nest(3000) + b"}", "d"),
    "deep at the top": (nest(100_000), None),
    "deep unterminated": (b'{"id":"d","z":' + b"[" * 100_000, "d"),
    "huge integer": (HEAD + b'"params":{"seed":' + b"9" * 100_000 + b"}}", "d"),
    "huge exponent": (HEAD + b'"low_prob":1e999999}', "d"),
    "huge integer id": (b'{"id":' + b"9" * 5000 + b',"model":"m","input":"x"}', None),
    "NaN": (HEAD + b'"low_prob":NaN}', None),  # malformed: no id is read from it
    "invalid UTF-8 in a value": (HEAD + b'"metadata":{"k":"\xff\xfe"}}', "d"),
    "invalid UTF-8 in the id": (b'{"id":"d\xc3","model":"m","input":"x"}', None),
    "lone surrogate escape": (HEAD + b'"metadata":{"k":"\\ud800"}}', None),
    "NUL byte raw": (b'{"id":"d\x00","model":"m","input":"x"}', None),
    "NUL byte escaped in the input": (b'{"id":"d","model":"m","input":"a\\u0000b","z":1}', "d"),
    "a list": (b'[{"id":"d","model":"m","input":"x"}]', None),
    "a string": (b'"{\\"id\\":\\"d\\"}"', None),
    "a number": (b"12", None),
    "null": (b"null", None),
    "empty": (b"", None),
    "whitespace": (b" \n\t ", None),
    "trailing garbage": (HEAD + b'"low_prob":0.5}}}', None),
    "duplicate keys, the last one bad": (b'{"id":"a","model":"m","input":"x","id":"has space"}', None),
    "id with a newline": (b'{"id":"d\\n","model":"m","input":"x","z":' + nest(2000) + b"}", None),
    "id of braces": (b'{"id":"{x}","model":"m","z":' + nest(2000) + b"}", None),
    "escaped id key": (b'{"\\u0069d":"d","model":"m","z":' + nest(2000) + b"}", "d"),
    "job field a str": ('{"id":"d","model":"m","input":"x"}', None),
    "job field an int": (7, None),
    "job field a list": ([b"x"], None),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_payloads_are_rejected_with_a_reason(name: str) -> None:
    payload, trusted_id = HOSTILE[name]
    if not isinstance(payload, str):  # JSON text in a str is decode_job's to read; admit wants bytes
        with pytest.raises(InvalidJob) as info:
            decode_job(payload)
        assert info.value.reason
    verdict = admit("1-0", payload, SETTINGS)
    assert isinstance(verdict, Rejected), verdict
    assert verdict.code in ("invalid_job", "payload_too_large") and verdict.reason
    assert verdict.job_id == trusted_id or (trusted_id is None and verdict.job_id in (None, "1-0"))
    assert job_id_of(payload, "1-0") == (trusted_id or "1-0") or isinstance(payload, str)


class _Raises:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def decode(self, _: bytes | str) -> Any:
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (RecursionError("maximum recursion depth exceeded"), "job is nested too deeply to decode"),
        (MemoryError(), "job could not be decoded (MemoryError: )"),
        (OverflowError("int too large"), "job could not be decoded (OverflowError: int too large)"),
    ],
)
def test_any_error_of_the_decoder_is_an_invalid_job(
    monkeypatch: pytest.MonkeyPatch, exc: BaseException, reason: str
) -> None:
    """The job decoder itself rejects deep values early (typed fields, unknown fields), but
    whatever it raises, on whatever stack depth, is an InvalidJob with the id still salvaged."""
    monkeypatch.setattr("worker.jobs._DECODER", _Raises(exc))
    payload = HEAD + b'"z":' + nest(3000) + b"}"
    with pytest.raises(InvalidJob) as info:
        decode_job(payload)
    assert info.value.reason == reason and info.value.job_id == "d"
    verdict = admit("1-0", payload, SETTINGS)
    assert verdict == Rejected("invalid_job", reason, "d")


def test_duplicate_keys_are_read_as_the_decoder_reads_them() -> None:
    """The last of duplicate keys wins, for the job and for the id cancels address it by."""
    payload = b'{"id":"a","model":"m","input":"x","id":"b"}'
    assert decode_job(payload).id == "b" == job_id_of(payload, "1-0")
    deep = b'{"id":"a","id":"b","z":' + nest(3000) + b"}"
    assert job_id_of(deep, "1-0") == "b"


def test_the_deep_scan_is_linear_on_quotes_and_backslashes() -> None:
    """Unterminated strings and escapes cannot make the fallback scan quadratic."""
    for payload in (b'{"id":"d","z":' + b'"\\' * 200_000, b'{"z":' + b'"' * 400_000):
        assert job_id_of(payload + nest(5000), "1-0") in ("d", "1-0")


# -- hypothesis -----------------------------------------------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
FIELDS = st.sampled_from(["id", "model", "input", "api", "messages", "params", "metadata", "escalate", "z"])


@st.composite
def nested_jobs(draw: st.DrawFn) -> bytes:
    """A job-shaped object whose fields hold arbitrary JSON, one of them wrapped very deep."""
    fields: dict[str, Any] = draw(st.dictionaries(FIELDS, JSON, max_size=6))
    if draw(st.booleans()):
        fields.setdefault("id", draw(st.sampled_from(["d", "a.b:c", "", "x y", "{x}"])))
    text = json.dumps(fields).encode()
    depth = draw(st.integers(min_value=0, max_value=5000))
    where = draw(FIELDS)
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"k":', b"}")]))
    deep = opener * depth + json.dumps(draw(JSON)).encode() + closer * depth
    body = text[1:-1]
    sep = b"," if body else b""
    placed = b"{" + json.dumps(where).encode() + b":" + deep + sep + body + b"}"
    if draw(st.booleans()):
        placed = b"{" + body + sep + json.dumps(where).encode() + b":" + deep + b"}"
    cut = draw(st.integers(min_value=0, max_value=len(placed)))
    return placed if draw(st.booleans()) else placed[:cut]


def _total(payload: bytes) -> None:
    try:
        job = decode_job(payload)
    except InvalidJob as exc:
        assert isinstance(exc.reason, str) and exc.reason
        assert exc.job_id is None or isinstance(exc.job_id, str)
    else:
        assert job.model
    assert isinstance(job_id_of(payload, "1-0"), str)
    verdict = admit("1-0", payload, SETTINGS)
    assert isinstance(verdict, Admitted | Rejected)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(payload: bytes) -> None:
    _total(payload)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nested_jobs())
def test_arbitrary_nested_json(payload: bytes) -> None:
    _total(payload)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nested_jobs(), st.integers(min_value=4, max_value=100))
def test_the_exhausted_path_is_total(payload: bytes, deliveries: int) -> None:
    runner = _runner(fakeredis.FakeAsyncRedis())
    rejected = runner._exhausted(Delivery("1-0", payload, deliveries=deliveries))
    assert rejected.code == "max_deliveries_exceeded" and isinstance(rejected.job_id, str)


# -- the runner dead-letters hostile entries once, with a terminal where the id is readable -------


def _runner(redis: fakeredis.FakeAsyncRedis) -> Runner:
    keys = Keys(SETTINGS.prefix)
    return Runner(
        settings=SETTINGS,
        store=JobStore(redis, keys),
        queue=JobQueue(redis, redis, keys, "me", dead_maxlen=100, check_permissions=False),
        publisher=Publisher(redis, maxlen=1000),
        http=httpx.AsyncClient(transport=httpx.MockTransport(lambda _: httpx.Response(500))),
        adapters=default_adapters(),
    )


@pytest.fixture
async def redis() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()


DEEP = HEAD + b'"z":' + nest(1000) + b"}"


@pytest.mark.parametrize("deliveries", [1, 4])
async def test_a_deep_entry_is_dead_lettered_once_with_its_terminal(
    redis: fakeredis.FakeAsyncRedis, deliveries: int
) -> None:
    """Admitted (first delivery) or exhausted (past max_deliveries): dead-lettered, acked, and
    job d's stream ends with an error naming why."""
    runner, keys = _runner(redis), Keys(SETTINGS.prefix)
    await runner.queue.ensure_group()
    entry = as_text(await redis.xadd(keys.jobs, {"job": DEEP}))
    await redis.xreadgroup("workers", "me", {keys.jobs: ">"})
    await runner.handle(Delivery(entry, DEEP, deliveries=deliveries))
    dead: Any = await redis.xrange(keys.dead)
    assert len(dead) == 1
    fields = dead[0][1]
    code = "invalid_job" if deliveries == 1 else "max_deliveries_exceeded"
    assert fields[b"code"] == code.encode() and fields[b"job_id"] == b"d"
    if deliveries == 1:
        assert b"unknown field `z`" in fields[b"reason"]
    written: Any = await redis.xrange(keys.events("d"))
    events = [decode_event(f[b"event"]) for _, f in written]
    assert [(event_type(e), getattr(e, "code", None)) for e in events] == [("error", code)]
    assert await redis.xlen(keys.jobs) == 0
