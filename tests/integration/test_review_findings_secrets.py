"""Review finding on the secret holdback (worker/holdback.py, issue 12 §4/§8), on a real
redis-server with a real worker: an upstream (an httpx.MockTransport given to the worker as its
HTTP client) echoes the request's API key as generated tokens it marks ``special``.
Fixed (finding 1, /work/briefs/review-findings.md): special tokens go through the same matching
as the channel's text, whichever tokens the upstream marks special."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import msgspec
import pytest

from worker import Client
from worker import redact as redact_module
from worker.redact import Redactor
from worker.settings import Provider

pytestmark = pytest.mark.integration

KEY = "tw-provider-key-0123456789abcdefXYZ"  # no credential shape: only the known-secret path applies


def _event(text: str, special: bool) -> bytes:
    token = {"id": 7, "text": text, "logprob": -0.1, "special": special}
    return (
        b"data: " + msgspec.json.encode({"token": token, "generated_text": None, "details": None}) + b"\n\n"
    )


Split = Callable[[list[str]], list[bool]]
SPLITS: dict[str, Split] = {  # which of the key's 5-character pieces the upstream calls special
    "all-special": lambda pieces: [True] * len(pieces),
    "ordinary-prefix": lambda pieces: [i >= 2 for i in range(len(pieces))],
    "special-prefix": lambda pieces: [i < 2 for i in range(len(pieces))],
    "alternating": lambda pieces: [i % 2 == 0 for i in range(len(pieces))],
}
_split: list[Split] = [SPLITS["all-special"]]


def _upstream(request: httpx.Request) -> httpx.Response:
    key = request.headers["authorization"].removeprefix("Bearer ")
    pieces = [key[i : i + 5] for i in range(0, len(key), 5)]
    marks = _split[0](pieces)
    body = _event("Your key is ", False) + b"".join(_event(p, m) for p, m in zip(pieces, marks, strict=True))
    final = {
        "token": {"id": 2, "text": ".", "logprob": -0.1, "special": False},
        "generated_text": None,
        "details": {"finish_reason": "eos_token", "generated_tokens": len(pieces) + 2},
    }
    body += b"data: " + msgspec.json.encode(final) + b"\n\n"
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)


@pytest.fixture
def known_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TW_REVIEW_KEY", KEY)
    before = redact_module.installed()
    redact_module.install(Redactor([KEY]))  # what the worker's entry point installs from its settings
    yield None
    redact_module.install(before)


@pytest.mark.parametrize("split", SPLITS)
async def test_a_key_echoed_as_special_tokens_is_redacted(
    split: str,
    known_key: None,
    start_worker: Callable[..., Awaitable[Any]],
    client: Client,
    redis: Any,
    prefix: str,
) -> None:
    _split[0] = SPLITS[split]
    provider = Provider(native_url="https://up.test/v1/inference/{model}", api_key_env="TW_REVIEW_KEY")
    await start_worker(
        http=httpx.AsyncClient(transport=httpx.MockTransport(_upstream)), providers={"sim": provider}
    )
    job_id = await client.enqueue(model="m", input="hi")
    await client.result(job_id, timeout=15)
    from worker.keys import Keys

    rows: Any = await redis.xrange(Keys(prefix).events(job_id))
    tokens = [json.loads(f[b"event"]) for _, f in rows]
    text = "".join(e.get("text", "") for e in tokens if e.get("type") == "token")
    assert KEY[:8] not in text, f"the key reached token events: {text!r}"
    shown = "".join(e.get("text", "") for e in tokens if e.get("type") == "token" and not e.get("special"))
    assert KEY[:8] not in shown, f"the key reached the ordinary tokens: {shown!r}"
    assert not any(KEY[:8] in str(f) for _, f in rows)  # nor any other event (the done's text)
