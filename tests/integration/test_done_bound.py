"""A long answer with a small ``max_event_bytes``: the job ends ``done`` (never failed for its own
length), its ``done`` within the bound, flagged ``text_truncated``, and the whole answer is the
concatenation of the token events' text."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from worker import Client
from worker.events import Done, Token, decode_event
from worker.keys import Keys

from .conftest import RunningWorker

pytestmark = pytest.mark.integration

LIMIT = 4096


# completions is left out: its token offsets drift from done.text (a defect noted on issue 12)
@pytest.mark.parametrize("api", ["chat", "native"])
async def test_a_done_longer_than_max_event_bytes_is_cut_and_flagged(
    start_worker: Callable[..., Awaitable[RunningWorker]], client: Client, redis: Redis, prefix: str, api: str
) -> None:
    await start_worker(max_event_bytes=LIMIT)
    prompt: dict[str, Any] = (
        {"messages": [{"role": "user", "content": "hi"}]} if api == "chat" else {"input": "hi"}
    )
    job_id = await client.enqueue(model="m", api=api, params={"max_tokens": 3000}, **prompt)
    done = await client.result(job_id, timeout=60)
    entries: Any = await redis.xrange(Keys(prefix).events(job_id))
    raw = entries[-1][1][b"event"]
    assert isinstance(decode_event(raw), Done) and len(raw) <= LIMIT
    tokens = [e for _, f in entries if isinstance(e := decode_event(f[b"event"]), Token)]
    content = [t for t in tokens if t.channel == "content"]
    assert content[-1].char_end > len(done.text) and done.text_truncated
    kept = [t for t in content if t.char_end <= len(done.text)]
    assert len(kept) > 100  # as much as fits was kept
    for t in kept:  # the kept text is the answer's beginning: each token's span in it is its text
        if "\\x" not in t.text and len(t.text) == t.char_end - t.char_start:
            assert done.text[t.char_start : t.char_end] == t.text, t
