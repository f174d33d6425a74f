"""Event shapes of the OpenAI-style routes, in four providers' dialects.

Every encoder here is an :class:`~worker.sim.server.Encoder`; the request's ``dialect`` directive
picks one (:func:`chat_encoder`, :func:`completions_encoder`):

* ``openai``: a role chunk, one chunk per token with ``delta.content`` and ``logprobs.content``
  entries (``token``, ``logprob``, ``bytes``, ``top_logprobs``), a finish chunk (``delta: {}``,
  ``logprobs: null``), a ``choices: []`` usage chunk when ``stream_options.include_usage``, then
  ``[DONE]``. Byte-fallback pieces of a split character carry their own partial ``bytes`` and an
  escaped token string (``"\\xf0"``), as OpenAI sends them; their ``delta.content`` is ``""`` until
  the character completes.
* ``vllm``: the OpenAI shape without ``system_fingerprint`` and ``usage: null``, ``stop_reason``
  next to ``finish_reason``, logprobs clamped to ``>= -9999.0``, byte pieces as ``"\\ufffd"`` with
  the replacement character's bytes, and the finish reason riding on the last token chunk, whose
  EOS shows as the empty stop token ``{"token": "", "logprob": -9999.0, "bytes": []}``.
* ``llamacpp``: llama-server's OAI-compatible stream (keys sorted, like nlohmann::json): a role
  chunk with ``content: null``, entries with ``id``; a partial-UTF-8 piece sends no chunk at all (no
  delta, so its logprob is lost, as in llama-server) and the completing piece's ``token`` is ``""``
  while its ``bytes`` hold the raw byte.
* ``together``: one chunk per token, ``delta.token_id``, ``logprobs`` a bare number and
  ``top_logprobs`` a ``{token: logprob}`` map; the EOS chunk carries ``finish_reason: "eos"``, the
  request seed and the usage.

The legacy completions route sends ``text`` and the ``tokens / token_logprobs / top_logprobs /
text_offset`` arrays (``top_logprobs`` keyed by token string, so equal strings collapse; the sampled
token is always in it), except llama.cpp, which reuses its chat-style ``logprobs.content``.

Per-chunk heads are encoded once per stream; a token chunk is the head plus two small encodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import msgspec

from worker.sim.faults import Flavor
from worker.sim.generate import BYTE_ID_BASE, SimToken

__all__ = [
    "SENTINEL",
    "SENTINEL_BELOW",
    "ChunkEncoder",
    "StreamInfo",
    "chat_encoder",
    "completions_encoder",
    "is_byte_piece",
    "wire_token",
]

SENTINEL = -9999.0  # OpenAI's "not in the top 20" logprob; vLLM's clamp
SENTINEL_BELOW = -3.75  # with ``sentinel=1``, sampled tokens less likely than this report SENTINEL
_REPLACEMENT = "\ufffd"
_REPLACEMENT_BYTES = (0xEF, 0xBF, 0xBD)

_ENC = msgspec.json.Encoder()
_SORTED = msgspec.json.Encoder(order="sorted")  # llama-server's JSON library sorts keys

_REASONS: dict[str, str] = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}
_TOGETHER_REASONS: dict[str, str] = {"eos_token": "eos", "stop_sequence": "stop", "length": "length"}

# One held token: the token, its top-k list (or None), whether its logprobs are sent.
_Item = tuple[SimToken, Sequence[SimToken] | None, bool]


class StreamInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What an encoder needs to know about its request."""

    flavor: Flavor
    id: str
    created: int
    model: str
    fingerprint: str
    logprobs: bool  # the request asked for logprobs
    include_usage: bool = False
    prompt_tokens: int = 0
    prompt_chars: int = 0  # legacy ``text_offset`` counts from the end of the prompt
    seed: int | None = None
    stop: tuple[str, ...] = ()
    per_chunk: int = 1
    nolp_every: int = 0
    sentinel: bool = False


class _End(msgspec.Struct, frozen=True):
    reason: str  # in the dialect's vocabulary
    stop: str | None  # the stop sequence that ended the stream (vLLM ``stop_reason``)
    usage: dict[str, int]


class _Top(msgspec.Struct, gc=False):
    token: str
    logprob: float
    bytes: list[int] | None


class _Entry(msgspec.Struct, gc=False):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[_Top]


class _LlamaTop(msgspec.Struct, gc=False):
    id: int
    token: str
    bytes: list[int]
    logprob: float


class _LlamaEntry(msgspec.Struct, gc=False):
    id: int
    token: str
    bytes: list[int]
    logprob: float
    top_logprobs: list[_LlamaTop]


def is_byte_piece(token: SimToken) -> bool:
    """Whether ``token`` is one byte of a character split into byte-fallback tokens."""
    return BYTE_ID_BASE <= token.id < BYTE_ID_BASE + 256


def _hex(raw: bytes) -> str:
    return "".join(f"\\x{b:02x}" for b in raw)


_FORMS: dict[tuple[str, int, str, bool], tuple[str, list[int]]] = {}
_FORM_CACHE_MAX_TEXT = 64  # the vocabulary is finite; the ``big`` fault's filler is not cached


def wire_token(flavor: Flavor, token: SimToken, *, legacy: bool = False) -> tuple[str, list[int]]:
    """The token string and ``bytes`` a provider reports for ``token`` (memoised; do not mutate).

    Only byte-fallback pieces differ: OpenAI escapes them (``"\\xf0"``; legacy completions
    ``"bytes:\\xf0"``), vLLM decodes them to ``"\\ufffd"`` and derives ``bytes`` from that,
    llama.cpp truncates the string to valid UTF-8 (``""``) and keeps the raw byte, Together sends the
    decoded text (``""`` until the character completes).
    """
    key = (flavor, token.id, token.text, legacy)
    found = _FORMS.get(key)
    if found is None:
        found = _wire_token(flavor, token, legacy)
        if len(token.text) <= _FORM_CACHE_MAX_TEXT:
            _FORMS[key] = found
    return found


def _wire_token(flavor: Flavor, token: SimToken, legacy: bool) -> tuple[str, list[int]]:
    raw = list(token.raw)
    if not is_byte_piece(token):
        return token.text, raw
    if flavor == "openai":
        return ("bytes:" if legacy else "") + _hex(token.raw), raw
    if flavor == "vllm":
        return _REPLACEMENT, list(_REPLACEMENT_BYTES)
    if flavor == "llamacpp":
        return "", raw
    return token.text, raw


def _top(flavor: Flavor, token: SimToken) -> _Top:
    text, raw = wire_token(flavor, token)
    return _Top(text, token.logprob, raw)


def _text(items: Sequence[_Item]) -> str:
    return "".join(token.text for token, _, _ in items if not token.special)


class ChunkEncoder:
    """Base of this module's encoders: holds tokens until a chunk is due (``per_chunk``), marks
    ``nolp_every`` tokens, and runs the end of the stream (finish chunk, usage, ``[DONE]``)."""

    __slots__ = ("_count", "_info", "_pending", "_per_chunk", "_reasons")

    done_by_default = True
    _REASONS: ClassVar[dict[str, str]] = _REASONS
    _KEEP_EOS: ClassVar[bool] = False  # the EOS token shows up as a token entry
    _KEEP_STOP: ClassVar[bool] = False  # the token completing a stop sequence is sent

    def __init__(self, info: StreamInfo) -> None:
        self._info = info
        self._pending: list[_Item] = []
        self._count = 0
        self._per_chunk = info.per_chunk
        self._reasons = self._REASONS

    def start(self) -> Sequence[bytes]:
        return ()

    def token(self, token: SimToken, top: Sequence[SimToken] | None) -> bytes | None:
        self._hold(token, top)
        if len(self._pending) < self._per_chunk:
            return None
        return self._take()

    def flush(self) -> Sequence[bytes]:
        payload = self._take()
        return () if payload is None else (payload,)

    def final(
        self,
        token: SimToken,
        top: Sequence[SimToken] | None,
        *,
        finish_reason: str,
        generated_text: str,
        generated_tokens: int,
    ) -> Sequence[bytes]:
        stopped = finish_reason == "stop_sequence"
        if (self._KEEP_STOP or not stopped) and (self._KEEP_EOS or not token.special):
            self._hold(token, top)
        info = self._info
        usage = {
            "prompt_tokens": info.prompt_tokens,
            "completion_tokens": generated_tokens,
            "total_tokens": info.prompt_tokens + generated_tokens,
        }
        stop = next((s for s in info.stop if s in generated_text), None) if stopped else None
        return self._close(_End(self._reasons.get(finish_reason, finish_reason), stop, usage))

    def error(self, message: str, error_type: str) -> Sequence[bytes]:
        kind = "server_error" if error_type == "generation" else error_type
        error = {"message": message, "type": kind, "param": None, "code": None}
        return (_ENC.encode({"error": error}), b"[DONE]")

    def _hold(self, token: SimToken, top: Sequence[SimToken] | None) -> None:
        self._count += 1
        every = self._info.nolp_every
        with_lp = self._info.logprobs and not (every and self._count % every == 0)
        self._pending.append((token, top, with_lp))

    def _take(self, end: _End | None = None) -> bytes | None:
        if not self._pending and end is None:
            return None
        items, self._pending = self._pending, []
        return self._chunk(items, end)

    def _logprob(self, token: SimToken, top: Sequence[SimToken] | None) -> tuple[float, Sequence[SimToken]]:
        """The sampled logprob and top-k list as sent: with ``sentinel``, an unlikely sampled token
        reports -9999.0 and leaves the list (it is "outside the top 20")."""
        alternatives = top or ()
        if self._info.sentinel and token.logprob < SENTINEL_BELOW:
            return SENTINEL, [t for t in alternatives if t.id != token.id]
        return token.logprob, alternatives

    def _last(self, end: _End) -> Sequence[bytes]:
        """The held tokens as one chunk that also carries the finish reason."""
        payload = self._take(end)
        return () if payload is None else (payload,)

    def _close(self, end: _End) -> Sequence[bytes]:
        """Default end: the held tokens, a finish chunk, the usage chunk when asked."""
        out = list(self.flush())
        out.append(self._finish(end))
        if self._info.include_usage:
            out.append(self._usage(end.usage))
        return out

    def _chunk(self, items: Sequence[_Item], end: _End | None) -> bytes | None:
        raise NotImplementedError

    def _finish(self, end: _End) -> bytes:
        raise NotImplementedError

    def _usage(self, usage: dict[str, int]) -> bytes:
        raise NotImplementedError


def _head(info: StreamInfo, obj: str, *, fingerprint: bool) -> bytes:
    """``{"id":…,"object":…,"created":…,"model":…[,"system_fingerprint":…]`` (object left open)."""
    head: dict[str, Any] = {"id": info.id, "object": obj, "created": info.created, "model": info.model}
    if fingerprint:
        head["system_fingerprint"] = info.fingerprint
    return _ENC.encode(head)[:-1]


class _OpenAIChat(ChunkEncoder):
    """OpenAI ``chat.completion.chunk`` events."""

    __slots__ = ("_choice", "_usage_head")

    def __init__(self, info: StreamInfo) -> None:
        super().__init__(info)
        top = _head(info, "chat.completion.chunk", fingerprint=info.flavor == "openai")
        self._choice = top + b',"choices":[{"index":0,"delta":'
        self._usage_head = top + b',"choices":[],"usage":'

    def start(self) -> Sequence[bytes]:
        logprobs = b'{"content":[],"refusal":null}' if self._info.logprobs else b"null"
        return (self._wrap(b'{"role":"assistant","content":""}', logprobs, None),)

    def _chunk(self, items: Sequence[_Item], end: _End | None) -> bytes:
        entries = [self._entry(token, top) for token, top, with_lp in items if with_lp]
        logprobs = b'{"content":' + _ENC.encode(entries) + b',"refusal":null}' if entries else b"null"
        return self._wrap(b'{"content":' + _ENC.encode(_text(items)) + b"}", logprobs, end)

    def _entry(self, token: SimToken, top: Sequence[SimToken] | None) -> _Entry:
        flavor = self._info.flavor
        logprob, alternatives = self._logprob(token, top)
        text, raw = wire_token(flavor, token)
        return _Entry(text, logprob, raw, [_top(flavor, t) for t in alternatives])

    def _wrap(self, delta: bytes, logprobs: bytes, end: _End | None) -> bytes:
        reason = b"null" if end is None else _ENC.encode(end.reason)
        parts = (self._choice, delta, b',"logprobs":', logprobs, b',"finish_reason":', reason)
        return b"".join(parts) + b'}],"usage":null}'

    def _finish(self, end: _End) -> bytes:
        return self._wrap(b"{}", b"null", end)

    def _usage(self, usage: dict[str, int]) -> bytes:
        return self._usage_head + _ENC.encode(usage) + b"}"


class _VllmChat(_OpenAIChat):
    """vLLM's OpenAI server: clamped logprobs, ``stop_reason``, finish on the last token chunk."""

    __slots__ = ()

    _KEEP_EOS = True

    def start(self) -> Sequence[bytes]:
        return (self._wrap(b'{"role":"assistant","content":""}', b"null", None),)

    def _entry(self, token: SimToken, top: Sequence[SimToken] | None) -> _Entry:
        if token.special:  # skip_special_tokens: the EOS has no text left
            return _Entry("", SENTINEL, [], [])
        entry = super()._entry(token, top)
        entry.logprob = max(entry.logprob, SENTINEL)
        for alternative in entry.top_logprobs:
            alternative.logprob = max(alternative.logprob, SENTINEL)
        return entry

    def _wrap(self, delta: bytes, logprobs: bytes, end: _End | None) -> bytes:
        if end is None:
            tail = b',"finish_reason":null,"stop_reason":null}]}'
        else:
            tail = b',"finish_reason":' + _ENC.encode(end.reason) + b',"stop_reason":' + _ENC.encode(end.stop)
            tail += b"}]}"
        return self._choice + delta + b',"logprobs":' + logprobs + tail

    def _close(self, end: _End) -> Sequence[bytes]:
        out = list(self._last(end))
        if self._info.include_usage:
            out.append(self._usage(end.usage))
        return out


class _TogetherChat(ChunkEncoder):
    """Together's chunks: one token each, ``logprobs`` a number, ``top_logprobs`` a map."""

    __slots__ = ("_choice",)

    _REASONS = _TOGETHER_REASONS
    _KEEP_EOS = True
    _KEEP_STOP = True

    def __init__(self, info: StreamInfo) -> None:
        super().__init__(info)
        self._per_chunk = 1
        top = _head(info, "chat.completion.chunk", fingerprint=False)
        self._choice = top + b',"choices":[{"index":0,"delta":'

    def _chunk(self, items: Sequence[_Item], end: _End | None) -> bytes:
        token, top, with_lp = items[-1]
        delta = {"content": "" if token.special else token.text, "token_id": token.id, "role": "assistant"}
        parts = [self._choice, _ENC.encode(delta), b',"logprobs":']
        if with_lp:
            parts.append(_ENC.encode(token.logprob))
            if top:
                parts += (b',"top_logprobs":', _ENC.encode({t.text: t.logprob for t in top}))
        else:
            parts.append(b"null")
        if end is None:
            parts.append(b',"finish_reason":null,"seed":null}],"usage":null}')
        else:
            seed = _ENC.encode(self._info.seed)
            parts += (b',"finish_reason":', _ENC.encode(end.reason), b',"seed":', seed)
            parts += (b'}],"usage":', _ENC.encode(end.usage), b"}")
        return b"".join(parts)

    def _close(self, end: _End) -> Sequence[bytes]:
        return self._last(end)


class _Llama(ChunkEncoder):
    """llama-server's OAI-compatible chat (``chat``) or completions stream; keys sorted."""

    __slots__ = ("_chat", "_tail")

    def __init__(self, info: StreamInfo, *, chat: bool) -> None:
        super().__init__(info)
        self._chat = chat
        rest = {
            "created": info.created,
            "id": info.id,
            "model": info.model,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "system_fingerprint": info.fingerprint,
        }
        self._tail = b"]," + _SORTED.encode(rest)[1:]

    def start(self) -> Sequence[bytes]:
        if not self._chat:
            return ()
        role = {"role": "assistant", "content": None}
        return (self._wrap({"delta": role, "finish_reason": None, "index": 0}),)

    def token(self, token: SimToken, top: Sequence[SimToken] | None) -> bytes | None:
        if is_byte_piece(token) and not token.text:
            return None  # incomplete UTF-8: llama-server sends no delta, so no logprobs either
        return super().token(token, top)

    def _chunk(self, items: Sequence[_Item], end: _End | None) -> bytes | None:
        choice: dict[str, Any] = {"finish_reason": None, "index": 0}
        if self._chat:
            choice["delta"] = {"content": _text(items)}
        else:
            choice["text"] = _text(items)
        entries = [self._entry(token, top) for token, top, with_lp in items if with_lp]
        if entries:
            choice["logprobs"] = {"content": entries}
        return self._wrap(choice)

    def _entry(self, token: SimToken, top: Sequence[SimToken] | None) -> _LlamaEntry:
        text, raw = wire_token("llamacpp", token)
        alternatives = [_LlamaTop(t.id, *wire_token("llamacpp", t), t.logprob) for t in top or ()]
        return _LlamaEntry(token.id, text, raw, token.logprob, alternatives)

    def _wrap(self, choice: dict[str, Any]) -> bytes:
        return b'{"choices":[' + _SORTED.encode(choice) + self._tail

    def _finish(self, end: _End) -> bytes:
        choice: dict[str, Any] = {"finish_reason": end.reason, "index": 0}
        if self._chat:
            choice["delta"] = {}
        else:
            choice["text"] = ""
        return self._wrap(choice)

    def _usage(self, usage: dict[str, int]) -> bytes:
        return b'{"choices":[' + self._tail[:-1] + b',"usage":' + _ENC.encode(usage) + b"}"

    def error(self, message: str, error_type: str) -> Sequence[bytes]:
        kind = "server_error" if error_type == "generation" else error_type
        return (_ENC.encode({"error": {"code": 500, "message": message, "type": kind}}),)


class _Legacy(ChunkEncoder):
    """Legacy ``text_completion`` chunks (OpenAI, vLLM, Together)."""

    __slots__ = ("_choice", "_offset", "_suffix", "_usage_head")

    def __init__(self, info: StreamInfo) -> None:
        super().__init__(info)
        if info.flavor == "together":
            self._reasons = _TOGETHER_REASONS
        top = _head(info, "text_completion", fingerprint=False)
        self._choice = top + b',"choices":[{"index":0,"text":'
        self._usage_head = top + b',"choices":[],"usage":'
        self._suffix = b"}]}" if info.flavor == "vllm" else b'}],"usage":null}'
        self._offset = info.prompt_chars

    def _chunk(self, items: Sequence[_Item], end: _End | None) -> bytes:
        tokens: list[str] = []
        logprobs: list[float] = []
        tops: list[dict[str, float]] = []
        offsets: list[int] = []
        flavor = self._info.flavor
        for token, top, with_lp in items:
            offset, self._offset = self._offset, self._offset + len(token.text)
            if not with_lp:
                continue
            logprob, alternatives = self._logprob(token, top)
            text = wire_token(flavor, token, legacy=True)[0]
            choices = {wire_token(flavor, t, legacy=True)[0]: t.logprob for t in alternatives}
            choices.setdefault(text, logprob)  # the sampled token is always listed
            tokens.append(text)
            logprobs.append(max(logprob, SENTINEL))
            tops.append(choices)
            offsets.append(offset)
        obj: dict[str, Any] | None = None
        if tokens:
            top_logprobs = tops if any(top is not None for _, top, _ in items) else None
            obj = {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": top_logprobs}
            obj["text_offset"] = offsets
        return self._wrap(_text(items), obj, None)

    def _wrap(self, text: str, logprobs: dict[str, Any] | None, end: _End | None) -> bytes:
        reason = b"null" if end is None else _ENC.encode(end.reason)
        parts = [self._choice, _ENC.encode(text), b',"finish_reason":', reason]
        parts += (b',"logprobs":', _ENC.encode(logprobs))
        if self._info.flavor == "vllm":
            parts += (b',"stop_reason":', b"null" if end is None else _ENC.encode(end.stop))
        parts.append(self._suffix)
        return b"".join(parts)

    def _finish(self, end: _End) -> bytes:
        payload = self._wrap("", None, end)
        if self._info.flavor == "together":  # usage rides on the finish chunk
            payload = payload.removesuffix(b"null}") + _ENC.encode(end.usage) + b"}"
        return payload

    def _close(self, end: _End) -> Sequence[bytes]:
        if self._info.flavor != "together":
            return super()._close(end)
        return (*self.flush(), self._finish(end))

    def _usage(self, usage: dict[str, int]) -> bytes:
        return self._usage_head + _ENC.encode(usage) + b"}"


def chat_encoder(info: StreamInfo) -> ChunkEncoder:
    """The chat-completions encoder for ``info.flavor``."""
    if info.flavor == "together":
        return _TogetherChat(info)
    if info.flavor == "vllm":
        return _VllmChat(info)
    if info.flavor == "llamacpp":
        return _Llama(info, chat=True)
    return _OpenAIChat(info)


def completions_encoder(info: StreamInfo) -> ChunkEncoder:
    """The legacy-completions encoder for ``info.flavor``."""
    if info.flavor == "llamacpp":
        return _Llama(info, chat=False)
    return _Legacy(info)
