"""OpenAI-compatible chat completions (``/v1/chat/completions``): OpenAI, vLLM, Together, llama.cpp.

Only choice index 0 is read here; a job with ``candidates`` asks for ``n`` choices and reads them all
through :mod:`worker.upstream.choices`. One chunk carries 0..n tokens:

* OpenAI/vLLM ``choices[0].logprobs.content[]`` → one record per entry (``bytes`` kept,
  ``top_logprobs`` as candidates, ``[]`` meaning none). These entries say nothing of special tokens
  (``special`` is ``None``): vLLM's final stop token (``""``, ``-9999.0``, ``bytes: []``) has no text
  and no bytes, so the confidence tracker takes it for a control token.
* Together ``choices[0].logprobs`` as a *number* (the sampled token's logprob; text from
  ``delta.content``, id from ``delta.token_id``, alternatives from ``choices[0].top_logprobs``, a
  ``{token: logprob}`` map or a list of such maps; ``special`` is explicit: an empty piece is part of
  a split character, ``False``, unless it finishes the stream, ``True``); its older top-level
  ``token`` object (with ``special``, passed on as sent) wins when present; its list shape
  ``{tokens, token_logprobs, token_ids, top_logprobs}`` is read as in legacy completions.
* Text without any logprob entry (llama.cpp drops them for tokens swallowed by its parsers, vLLM
  for reasoning chunks) → one record with ``logprob=None``, so no text is lost.
* ``delta.reasoning_content`` / ``delta.reasoning`` → records on channel ``reasoning`` (the logprob
  entries of a chunk without ``delta.content`` belong to its reasoning); never in ``Parsed.text``.

``Parsed.text`` is the chunk's ``delta.content``; ``finish_reason`` ends the generation (usage and
``[DONE]`` may follow); usage may come in a ``choices: []`` chunk (OpenAI), on the finish chunk
(DeepInfra) or on every chunk (``continuous_usage_stats``); ``[DONE]`` closes the stream. Logprob
values pass through raw (sentinels, clamps, positives): the confidence tracker sanitises them.
The chunk types and their token entries are read by :mod:`worker.upstream.openai_compat`, which
the completions adapter shares.
"""

from __future__ import annotations

from typing import Any

import msgspec

from worker.jobs import Job
from worker.settings import Provider, Settings
from worker.upstream.base import Parsed, TokenRecord, UpstreamError
from worker.upstream.openai_compat import (
    NO_DELTA,
    Choice,
    LegacyToken,
    decode_chunk,
    record,
    sampled,
    to_parsed,
)
from worker.upstream.request import bearer, max_tokens, sampling, with_model

__all__ = ["ChatAdapter"]

MAX_TOP_LOGPROBS = 20
"""OpenAI chat allows ``top_logprobs`` 0..20."""

_ENCODER = msgspec.json.Encoder()


class ChatAdapter:
    """Build OpenAI-compatible chat requests and parse their chunks (no stream state)."""

    api = "chat"
    event_prefix = None

    def build_request(
        self,
        job: Job,
        *,
        model_url: str,
        settings: Settings,
        provider: Provider,
        logprobs: bool = True,
    ) -> tuple[str, bytes]:
        """``(url, JSON body)`` of a streaming request, with logprobs unless ``logprobs=False``
        (a model that refuses them: neither ``logprobs`` nor ``top_logprobs`` is sent)."""
        if job.messages is None:
            raise UpstreamError("bad_request", "the chat API needs `messages`")
        messages = [_message(m.role, m.content, m.name) for m in job.messages]
        body: dict[str, Any] = {
            "model": job.model,
            "messages": messages,
            "stream": True,
            "max_tokens": max_tokens(job, settings),
            **sampling(job),
        }
        if logprobs:
            body["logprobs"] = True
            top = min(job.params.top_logprobs or 0, MAX_TOP_LOGPROBS)
            if top > 0:
                body["top_logprobs"] = top
        body["stream_options"] = {"include_usage": True}
        if job.candidates is not None and job.candidates.n > 1:  # one request, n choices (choices.py)
            body["n"] = job.candidates.n
        return with_model(model_url, job.model), _ENCODER.encode(body)

    def headers(self, key: str | None) -> dict[str, str]:
        return bearer(key)

    def parser(self, job: Job, *, logprobs: bool = True) -> ChatAdapter:
        return self

    def parse(self, data: str) -> Parsed:
        """One SSE data payload → :class:`Parsed`; raises :class:`UpstreamError` on error events."""
        if data == "[DONE]":
            return Parsed(closed=True)
        chunk = decode_chunk(data)
        if chunk is None:
            return Parsed(closed=True)
        return to_parsed(chunk, _chat_tokens)


def _message(role: str, content: str, name: str | None) -> dict[str, str]:
    if name is None:
        return {"role": role, "content": content}
    return {"role": role, "content": content, "name": name}


def _chat_tokens(choice: Choice, legacy: LegacyToken | None) -> tuple[list[TokenRecord], str | None]:
    """Choice 0 of a chat chunk → ``(records, delta.content or None)``.

    A chunk with only reasoning text puts its logprob entries on the ``reasoning`` channel; a chunk
    with both puts them on ``content`` and its reasoning text in a record without a logprob.
    """
    delta = choice.delta or NO_DELTA
    content = delta.content or None
    reasoning = delta.reasoning_content or delta.reasoning or None
    if content is None and reasoning is not None:
        records = sampled(choice, legacy, reasoning, "reasoning", delta.token_id)
        return records or [record(reasoning, None, delta.token_id, None, None, "reasoning")], None
    records = sampled(choice, legacy, content or "", "content", delta.token_id)
    if not records and content is not None:
        records = [record(content, None, delta.token_id, None, None, "content")]
    if reasoning is not None:
        records.insert(0, record(reasoning, None, None, None, None, "reasoning"))
    return records, content
