from __future__ import annotations

import msgspec
import pytest

from worker.admit import Admitted, Rejected, admit
from worker.jobs import InvalidJob, Job, decode_job, encode_job
from worker.settings import Settings


def test_round_trip_and_defaults() -> None:
    job = decode_job(b'{"model":"m","input":"hi"}')
    assert job.api == "native" and job.low_prob == 0.2 and job.metadata == {}
    assert decode_job(encode_job(job)) == job


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"[1,2]", "Expected `object`"),
        (b'{"model":"m"}', "needs `input`"),
        (b'{"model":"m","api":"chat","input":"x"}', "needs `messages`"),
        (b'{"model":"m","input":"x","params":{"top_logprobs":25}}', "top_logprobs"),
        (b'{"model":"m","input":"x","params":{"max_tokens":0}}', "max_tokens"),
        (b'{"model":"m","input":"x","url":"http://169.254.169.254"}', "unknown field `url`"),
        (b'{"model":"m","input":"x","id":"has space"}', "$.id"),
        (b'{"model":"m","input":"x","low_prob":1.5}', "low_prob"),
        (b"\xff", "not valid JSON"),
    ],
)
def test_invalid_jobs_say_why(raw: bytes, words: str) -> None:
    with pytest.raises(InvalidJob) as info:
        decode_job(raw)
    assert words in info.value.reason


def test_the_id_of_an_invalid_job_is_salvaged() -> None:
    with pytest.raises(InvalidJob) as info:
        decode_job(b'{"id":"abc","model":7,"input":"x"}')
    assert info.value.job_id == "abc"


def test_admission_checks_operator_limits() -> None:
    s = Settings(max_input_chars=10, max_tokens_cap=100, default_max_tokens=50, max_payload_bytes=200)
    ok = admit("1-0", b'{"model":"m","input":"short"}', s)
    assert isinstance(ok, Admitted) and ok.job_id == "1-0" and ok.provider_name == "deepinfra"
    for payload, code in [
        (b'{"model":"m","input":"much too long for ten"}', "input_too_large"),
        (b'{"model":"m","input":"x","params":{"max_tokens":101}}', "max_tokens_above_cap"),
        (b'{"model":"m","input":"x","provider":"nope"}', "unknown_provider"),
        (msgspec.json.encode({"model": "m", "input": "x" * 300}), "payload_too_large"),
        (None, "invalid_job"),
    ]:
        verdict = admit("1-0", payload, s)
        assert isinstance(verdict, Rejected) and verdict.code == code, (payload, verdict)


def test_job_never_carries_a_url() -> None:
    fields = {f.name for f in msgspec.structs.fields(Job)}
    assert not any("url" in name for name in fields)
