"""A provider's finish reason is outside input: it reaches ``done``, ``candidate_done``, the state
hash, spans and terminals, so every dialect's reason is bounded and made printable in one place
(:class:`worker.upstream.base.StreamEnd`)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.jobs import Job
from worker.upstream.adapters import DIALECTS
from worker.upstream.base import MAX_FINISH_REASON, StreamEnd, finish_reason

HOSTILE = "stop\x1b]52;c;cGF5bG9hZA==\x07\r\n" + "x" * 100_000


@settings(max_examples=300, deadline=None)
@given(reason=st.text(max_size=500))
def test_any_reason_is_bounded_and_printable(reason: str) -> None:
    kept = StreamEnd(reason).finish_reason
    assert len(kept) <= MAX_FINISH_REASON
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in kept)
    assert kept == finish_reason(reason)
    if len(reason) <= MAX_FINISH_REASON and reason.isprintable():
        assert kept == reason  # an ordinary reason is kept as sent


def test_a_reason_that_is_not_a_string_becomes_one() -> None:
    assert StreamEnd({"type": "stop"}).finish_reason == "{'type': 'stop'}"  # type: ignore[arg-type]


_END_EVENTS = {
    "native": {"token": {"id": 1, "text": "a", "logprob": -0.1}, "generated_text": "a",
               "details": {"finish_reason": HOSTILE, "generated_tokens": 1}},
    "chat": {"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": HOSTILE}]},
    "completions": {"choices": [{"index": 0, "text": "a", "finish_reason": HOSTILE}]},
}  # fmt: skip


@pytest.mark.parametrize("api", sorted(_END_EVENTS))
def test_each_dialect_keeps_a_bounded_printable_reason(api: str) -> None:
    prompt = {"messages": [{"role": "user", "content": "hi"}]} if api == "chat" else {"input": "hi"}
    parser = DIALECTS[api]().parser(Job(model="m", api=api, **prompt))  # type: ignore[arg-type]
    parsed = parser.parse(msgspec.json.encode(_END_EVENTS[api]).decode())
    assert parsed.end is not None
    reason = parsed.end.finish_reason
    assert reason.startswith("stop\ufffd]52;c;") and len(reason) == MAX_FINISH_REASON
    assert "\x1b" not in reason and "\x07" not in reason and "\n" not in reason
