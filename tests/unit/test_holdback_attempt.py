"""An attempt with a secret configured: tokens that may begin it are held, none is ever lost.

However the attempt stops (the stream ends, breaks off, the deadline passes, the job is cancelled),
the tokens the holdback still holds are published before the attempt's end is decided, so the
terminal event's id follows every token; the secret (or its prefix cut off by the stop) is in none.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import fakeredis
import httpx
import msgspec
import pytest

from worker.admit import Admitted, admit
from worker.attempt import Attempt, AttemptContext
from worker.events import Done, Error
from worker.jobs import Job, encode_job
from worker.keys import Keys
from worker.outcome import Failed, Finished
from worker.publisher import Publisher, Sink
from worker.redact import REDACTED, Redactor
from worker.settings import Provider, Settings
from worker.upstream.adapters import default_adapters
from worker.upstream.http import StreamLimits

KEY = "sk-test-5d1c9a7e3b2f4680"
PIECES = [
    "Your",
    " key",
    " is",
    " s",
    "k-",
    "te",
    "st-5d1c",
    "9a7e",
    "3b2f",
    "4680",
    ".",
    " Thanks",
]  # the last ends as the key begins: held at the end


class Captured(Publisher):
    """A publisher that keeps what the attempt emits (ids and decoded events)."""

    def __init__(self) -> None:
        super().__init__(fakeredis.FakeAsyncRedis(), maxlen=1000)
        self.events: list[tuple[bytes, dict[str, object]]] = []

    def emit(self, sink: Sink, entry_id: bytes, payload: bytes) -> None:
        self.events.append((entry_id, json.loads(payload)))


def _event(i: int, text: str) -> bytes:
    token = {"id": i, "text": text, "logprob": -0.2, "special": False}
    return (
        b"data: " + msgspec.json.encode({"token": token, "generated_text": None, "details": None}) + b"\n\n"
    )


def _final(i: int, text: str, generated: str) -> bytes:
    token = {"id": i, "text": text, "logprob": -0.2, "special": False}
    details = {"finish_reason": "length", "generated_tokens": i + 1}
    body = {"token": token, "generated_text": generated, "details": details}
    return b"data: " + msgspec.json.encode(body) + b"\n\n"


async def _run(
    body: AsyncIterator[bytes], *, deadline: float = 10.0, cancel_after: int | None = None
) -> tuple[Finished | object, Captured]:
    settings = Settings(
        prefix="t",
        default_provider="up",
        providers={"up": Provider(native_url="https://up.test/{model}", api_key_env="UP_KEY")},
    )

    def reply(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == f"Bearer {KEY}"
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    publisher = Captured()
    async with httpx.AsyncClient(transport=httpx.MockTransport(reply)) as http:
        ctx = AttemptContext(
            settings=settings,
            http=http,
            adapters=default_adapters(),
            publisher=publisher,
            keys=Keys("t"),
            limits=StreamLimits.from_settings(settings, max_tokens=settings.max_tokens_cap),
            environ={"UP_KEY": KEY},
            redactor=Redactor([KEY]),
        )
        verdict = admit("1-0", encode_job(Job(model="m", input="hi", id="j1")), settings)
        assert isinstance(verdict, Admitted)
        loop = asyncio.get_running_loop()
        attempt = Attempt(ctx, verdict, 1, loop.time() + deadline)
        task = asyncio.create_task(attempt.run())
        if cancel_after is None:
            return await task, publisher
        async with asyncio.timeout(5):
            while len(publisher.events) < cancel_after:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the stream now waits, tokens held
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert attempt.seq == len(publisher.events)
        return None, publisher


def _check(publisher: Captured, pieces: list[str]) -> str:
    """Every piece became one token event, in order, ids 1-1..1-n; no event shows the key or a
    prefix of it of four or more characters; the tokens' text."""
    ids = [entry_id for entry_id, _ in publisher.events]
    assert ids == [b"1-%d" % (i + 1) for i in range(len(pieces))]
    texts = [str(event["text"]) for _, event in publisher.events]
    assert [event["logprob"] for _, event in publisher.events] == [-0.2] * len(pieces)
    joined = "".join(texts)
    assert KEY not in joined and "sk-t" not in joined
    for _, event in publisher.events:
        assert "sk-t" not in json.dumps(event)
    return joined


async def _body(chunks: list[bytes], *, then_wait: bool = False) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
    if then_wait:
        await asyncio.sleep(3600)


async def test_a_finished_stream_ends_done_with_the_key_redacted_everywhere() -> None:
    generated = "".join(PIECES)
    chunks = [_event(i, p) for i, p in enumerate(PIECES[:-1])] + [
        _final(len(PIECES) - 1, PIECES[-1], generated)
    ]
    outcome, publisher = await _run(_body(chunks))
    assert isinstance(outcome, Finished) and isinstance(outcome.terminal, Done)
    joined = _check(publisher, PIECES)
    assert joined == f"Your key is {REDACTED}. Thanks" == outcome.terminal.text
    assert outcome.tokens == len(PIECES)
    assert outcome.terminal.usage.output_tokens == len(PIECES)


async def test_a_stream_broken_off_mid_key_publishes_the_held_tokens_without_its_prefix() -> None:
    cut = PIECES[:8]  # "...sk-test-5d1c9a7e": the stream ends without its final event
    outcome, publisher = await _run(_body([_event(i, p) for i, p in enumerate(cut)]))
    assert isinstance(outcome, Failed) and outcome.error.code == "upstream_incomplete"
    assert _check(publisher, cut) == f"Your key is {REDACTED}"


async def test_the_deadline_mid_key_publishes_the_held_tokens_before_the_error() -> None:
    cut = PIECES[:6]  # "... sk-te", then the upstream goes quiet
    outcome, publisher = await _run(
        _body([_event(i, p) for i, p in enumerate(cut)], then_wait=True), deadline=0.5
    )
    assert isinstance(outcome, Finished) and isinstance(outcome.terminal, Error)
    assert outcome.terminal.code == "deadline_exceeded"
    assert outcome.tokens == len(cut)  # the terminal's id follows every token
    assert _check(publisher, cut) == f"Your key is {REDACTED}"


async def test_a_cancel_mid_key_publishes_the_held_tokens() -> None:
    cut = PIECES[:7]
    _, publisher = await _run(
        _body([_event(i, p) for i, p in enumerate(cut)], then_wait=True), cancel_after=3
    )
    assert _check(publisher, cut) == f"Your key is {REDACTED}"
