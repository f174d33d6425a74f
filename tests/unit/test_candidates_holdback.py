"""Candidates with a secret configured (unit lane: MockTransport, fakeredis): each candidate's
tokens pass its own holdback, so a key the upstream generates is redacted in every candidate's
tokens, its candidate_done and the winner's done, none is lost, and the ids of the interleaved
candidates stay strictly increasing. Native (n requests) and chat (one request for n choices)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import httpx
import msgspec

from worker.admit import Admitted, admit
from worker.attempt import AttemptContext
from worker.candidates import CandidatesAttempt
from worker.events import Done
from worker.jobs import Job, encode_job
from worker.keys import Keys
from worker.outcome import Finished
from worker.publisher import Publisher, Sink
from worker.redact import REDACTED, Redactor
from worker.settings import Provider, Settings
from worker.upstream.adapters import default_adapters
from worker.upstream.http import StreamLimits

KEY = "sk-test-5d1c9a7e3b2f4680"
PIECES = ["Your", " key", " is", " s", "k-", "te", "st-5d1c", "9a7e", "3b2f", "4680", ".", " Thanks"]


class Captured(Publisher):
    def __init__(self) -> None:
        super().__init__(fakeredis.FakeAsyncRedis(), maxlen=1000)
        self.events: list[tuple[bytes, dict[str, Any]]] = []

    def emit(self, sink: Sink, entry_id: bytes, payload: bytes) -> None:
        self.events.append((entry_id, json.loads(payload)))


def _native() -> list[bytes]:
    out = []
    for i, piece in enumerate(PIECES):
        token = {"id": i, "text": piece, "logprob": -0.2, "special": False}
        last = i == len(PIECES) - 1
        details = {"finish_reason": "length", "generated_tokens": i + 1} if last else None
        body = {"token": token, "generated_text": "".join(PIECES) if last else None, "details": details}
        out.append(b"data: " + msgspec.json.encode(body) + b"\n\n")
    return out


def _chat(n: int) -> list[bytes]:
    out = []
    for i, piece in enumerate(PIECES):
        for k in range(n):
            entry = {"token": piece, "logprob": -0.2, "bytes": list(piece.encode()), "top_logprobs": []}
            choice = {
                "index": k,
                "delta": {"content": piece},
                "logprobs": {"content": [entry]},
                "finish_reason": "stop" if i == len(PIECES) - 1 else None,
            }
            out.append(b"data: " + msgspec.json.encode({"choices": [choice]}) + b"\n\n")
    return [*out, b"data: [DONE]\n\n"]


async def _body(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def _run(api: str, n: int) -> tuple[Any, Captured, list[dict[str, Any]]]:
    provider = Provider(
        native_url="https://up.test/{model}", chat_url="https://up.test/v1/chat", api_key_env="UP_KEY"
    )
    settings = Settings(prefix="t", default_provider="up", providers={"up": provider})
    bodies: list[dict[str, Any]] = []

    def reply(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == f"Bearer {KEY}"
        bodies.append(json.loads(request.content))
        chunks = _chat(n) if api == "chat" else _native()
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=_body(chunks))

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
        prompt: dict[str, Any] = (
            {"messages": [{"role": "user", "content": "hi"}]} if api == "chat" else {"input": "hi"}
        )
        job = msgspec.convert({"model": "m", "id": "j1", "api": api, "candidates": {"n": n}, **prompt}, Job)
        verdict = admit("1-0", encode_job(job), settings)
        assert isinstance(verdict, Admitted)
        attempt = CandidatesAttempt(ctx, verdict, 1, asyncio.get_running_loop().time() + 10)
        return await attempt.run(), publisher, bodies


async def _check(api: str, n: int, requests: int) -> None:
    outcome, publisher, bodies = await _run(api, n)
    assert len(bodies) == requests
    if api == "chat":
        assert bodies[0]["n"] == n
    else:
        assert sorted(b["seed"] for b in bodies) == list(range(n))  # seed k without one
    ids = [int(entry_id.split(b"-")[1]) for entry_id, _ in publisher.events]
    assert ids == list(range(1, len(ids) + 1))  # strictly increasing over interleaved candidates
    for _, event in publisher.events:
        assert "sk-t" not in json.dumps(event)
    wanted = f"Your key is {REDACTED}. Thanks"
    for k in range(n):
        tokens = [e for _, e in publisher.events if e["type"] == "token" and e["candidate"] == k]
        assert len(tokens) == len(PIECES) and [t["index"] for t in tokens] == list(range(len(PIECES)))
        assert "".join(t["text"] for t in tokens) == wanted
        (close,) = [e for _, e in publisher.events if e["type"] == "candidate_done" and e["candidate"] == k]
        assert close["text"] == wanted
    assert isinstance(outcome, Finished) and isinstance(outcome.terminal, Done)
    done = outcome.terminal
    assert "sk-t" not in json.dumps(msgspec.to_builtins(done)) and done.text == wanted
    assert done.agreement == 1.0 and outcome.last_seq == ids[-1]


async def test_native_candidates_each_hold_back_the_key() -> None:
    await _check("native", 3, requests=3)


async def test_chat_choices_each_hold_back_the_key() -> None:
    await _check("chat", 3, requests=1)
