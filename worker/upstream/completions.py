"""Legacy OpenAI-compatible completions (``/v1/completions``): OpenAI, vLLM, Together, llama.cpp.

The request sends ``logprobs: k`` with k = the job's ``top_logprobs`` clamped to 0..5 (OpenAI's
maximum for completions; "up to k+1" alternatives may come back, as the sampled token is always
included), else 0: with ``logprobs: 0`` the sampled token's logprob is still returned.

Only choice index 0 is read here (a job with ``candidates`` asks ``n`` and reads every choice through
:mod:`worker.upstream.choices`). ``choices[0].text`` is ``Parsed.text``; ``choices[0].logprobs`` is
``{tokens, token_logprobs, top_logprobs, text_offset}`` (OpenAI, vLLM; Together adds
``token_ids`` and sends ``top_logprobs`` as one map per token), one record per ``tokens`` entry,
each ``{token: logprob}`` map as candidates (a map keyed by text has already merged alternatives
that decode alike); llama.cpp sends the chat shape ``logprobs.content[]`` instead; Together's
streaming chunks may carry a *number* (the sampled token's logprob) or a top-level ``token``
object, as in chat. Text without logprobs → one record with ``logprob=None``. ``finish_reason``
ends the generation, the usage chunk gives the token counts, ``[DONE]`` closes the stream, and
errors map as for chat (:mod:`worker.upstream.openai_compat`, :mod:`worker.upstream.errors`).
"""

from __future__ import annotations

from typing import Any

import msgspec

from worker.jobs import Job
from worker.settings import Provider, Settings
from worker.upstream.base import Parsed, TokenRecord, UpstreamError
from worker.upstream.openai_compat import Choice, LegacyToken, decode_chunk, record, sampled, to_parsed
from worker.upstream.request import bearer, max_tokens, sampling, with_model

__all__ = ["CompletionsAdapter"]

MAX_LOGPROBS = 5
"""OpenAI's maximum ``logprobs`` for completions."""

_ENCODER = msgspec.json.Encoder()


class CompletionsAdapter:
    """Build OpenAI-compatible completions requests and parse their chunks (no stream state)."""

    api = "completions"
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
        """``(url, JSON body)`` of a streaming request, with logprobs unless ``logprobs=False``."""
        if job.input is None:
            raise UpstreamError("bad_request", "the completions API needs `input`")
        body: dict[str, Any] = {
            "model": job.model,
            "prompt": job.input,
            "stream": True,
            "max_tokens": max_tokens(job, settings),
            **sampling(job),
        }
        if logprobs:
            body["logprobs"] = max(0, min(job.params.top_logprobs or 0, MAX_LOGPROBS))
        body["stream_options"] = {"include_usage": True}
        if job.candidates is not None and job.candidates.n > 1:  # one request, n choices (choices.py)
            body["n"] = job.candidates.n
        return with_model(model_url, job.model), _ENCODER.encode(body)

    def headers(self, key: str | None) -> dict[str, str]:
        return bearer(key)

    def parser(self, job: Job, *, logprobs: bool = True) -> CompletionsAdapter:
        return self

    def parse(self, data: str) -> Parsed:
        """One SSE data payload → :class:`Parsed`; raises :class:`UpstreamError` on error events."""
        if data == "[DONE]":
            return Parsed(closed=True)
        chunk = decode_chunk(data)
        if chunk is None:
            return Parsed(closed=True)
        return to_parsed(chunk, _completion_tokens)


def _completion_tokens(choice: Choice, legacy: LegacyToken | None) -> tuple[list[TokenRecord], str | None]:
    """Choice 0 of a completions chunk → ``(records, text or None)``."""
    text = choice.text or None
    token_id = choice.delta.token_id if choice.delta is not None else None
    records = sampled(choice, legacy, text or "", "content", token_id)
    if not records and text is not None:
        records = [record(text, None, token_id, None, None, "content")]
    return records, text
