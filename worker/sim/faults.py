"""Per-request directives (fault injection, stream shaping) and the dialect-neutral request.

Directives ride in the model name, so a job picks its fault through its ``model`` field and the
worker needs no special support::

    tokenwire/sim-small;fault=disconnect;after=5;tps=0;tokens=40
    tokenwire/sim-small;dialect=vllm;per_chunk=3;sentinel=1

The base model is the part before the first ``;``; each ``key=value`` after it is a directive (a
bare ``key`` means ``key=1``). The same keys may come as a JSON object in an optional request-body
field ``"sim"``, which wins over the model name, which wins over the server's default
(``SimConfig.fault``). An unknown key or a bad value is a :class:`DirectiveError` naming it.
"""

from __future__ import annotations

import functools
import http
import math
import time
from collections.abc import Mapping
from email.utils import formatdate
from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "DIRECTIVE_NAMES",
    "ECHO_HEADER",
    "GENERATION_ERROR",
    "HEADER_FAULTS",
    "DirectiveError",
    "Directives",
    "Fault",
    "Flavor",
    "RequestError",
    "SimRequest",
    "StatusReply",
    "echo_key_pieces",
    "echo_key_reply",
    "echo_key_text",
    "fault_applies",
    "parse_directives",
    "parse_model",
    "resolve",
    "status_reply",
]

Fault = Literal[
    "status",
    "disconnect",
    "stall",
    "malformed",
    "error",
    "eof",
    "big",
    # hostile upstreams: a compressed body (``coding``, ``size`` bytes of newlines decompressed),
    # ``size`` bytes of blank lines, a header line of ``size`` bytes, ``headers`` headers, an event
    # nested ``depth`` levels deep, a token-shaped event under the name ``event``
    "gzipbomb",
    "blankflood",
    "bigheader",
    "manyheaders",
    "deepjson",
    "named",
    # a hostile upstream echoing the request's API key (Bearer form and bare), where ``echo`` says
    "echo_key",
]
HEADER_FAULTS: frozenset[str] = frozenset({"gzipbomb", "bigheader", "manyheaders"})
"""Faults that shape the response's head: they fire before the first event, whatever ``after``."""
Flavor = Literal["openai", "together", "vllm", "llamacpp"]

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0.0)]

GENERATION_ERROR = (
    "Request failed during generation: Server error: CUDA out of memory. Tried to allocate 2.00 GiB"
)


class Directives(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What one request asks of the simulator; every field has a harmless default."""

    tokens: NonNegInt | None = None  # content tokens before EOS
    overrun: bool = False  # ignore the request's max_new_tokens (a provider overrunning its limit)
    tps: NonNegFloat | None = None  # tokens per second; 0 = as fast as possible
    fault: Fault | None = None
    after: NonNegInt = 0  # token events sent before the fault fires
    fail_first: NonNegInt | None = None  # only the first K requests for this model string fault
    status: Annotated[int, msgspec.Meta(ge=400, le=599)] = 503
    body: Literal["json", "html", "text", "empty"] = "json"
    retry_after: NonNegFloat | None = None  # seconds, sent as Retry-After
    retry_after_date: bool = False  # send Retry-After as an HTTP-date instead
    stall: NonNegFloat | None = None  # seconds; None = until the client goes away
    keepalive: bool = False  # ": ping" comments while idle
    ping: Annotated[float, msgspec.Meta(gt=0.0)] | None = None  # ping interval (implies keepalive)
    then: Literal["continue", "end"] = "continue"  # after a malformed or big event
    error_type: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "generation"
    size: Annotated[int, msgspec.Meta(ge=1, le=256 * 1024 * 1024)] = 2_000_000  # big event bytes
    coding: Literal["gzip", "deflate"] = "gzip"  # gzipbomb's Content-Encoding
    headers: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 100_000  # manyheaders' count
    depth: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1000  # deepjson's nesting
    event: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}\Z")] = "ping"  # named's name
    # echo_key's echo: an in-stream error at HTTP 200, a malformed event, an HTTP 401 body (and its
    # WWW-Authenticate header), a 200 response's head (its content type and an ECHO_HEADER), or
    # generated text (echo_key_pieces: small tokens after `after` tokens, then the stream goes on)
    echo: Literal["error", "malformed", "status", "header", "tokens"] = "error"
    rst: bool = False  # disconnect with a TCP reset instead of a FIN
    # chat/completions with `n` choices: this choice stops after `after` tokens without a finish_reason (the
    # others go on), as a provider's choice that breaks off
    drop_choice: NonNegInt | None = None
    # chat/completions: ignore the request's `n` and stream one choice (index 0), as an
    # OpenAI-compatible server without `n` support does (counted as the fault "ignore_n")
    ignore_n: bool = False
    done: bool = False  # append "data: [DONE]" after the final event
    nospace: bool = False  # "data:{...}" without the space
    crlf: bool = False  # CRLF line endings
    utf8split: bool = False  # split every multi-byte character into byte-fallback tokens
    lang: Literal["en", "zh", "ja"] = "en"  # the text: English-ish, Chinese or Japanese (generate.LANGS)
    # logprobs known by hand: every token's `lp` (later bytes of a split character keep
    # generate.CONTINUATION_LOGPROB), and `low_run` tokens from token `low_at` at `low_lp`
    lp: Annotated[float, msgspec.Meta(ge=-30.0, le=0.0)] | None = None
    low_at: NonNegInt = 0
    low_run: NonNegInt = 0
    low_lp: Annotated[float, msgspec.Meta(ge=-30.0, le=0.0)] = -3.0
    stamp: bool = False  # each token's id is its send time, µs since the epoch (latency probes)
    # OpenAI-style routes only (/v1/openai/chat/completions, /v1/openai/completions):
    dialect: Flavor = "openai"  # whose wire shape the stream takes
    per_chunk: Annotated[int, msgspec.Meta(ge=1, le=256)] = 1  # tokens per chunk (not together)
    nolp_every: NonNegInt = 0  # every Nth token arrives with its text but without logprobs
    sentinel: bool = False  # very unlikely tokens report -9999.0 (openai, vllm)
    # the model refuses logprobs: a request asking for them gets the dialect's refusal (responses:
    # OpenAI's unsupported_parameter; gemini: 400 "Logprobs is not supported ..."; chat: Groq's)
    nologprobs: bool = False
    split_top: bool = False  # gemini: a chunk's topCandidates arrive on the next chunk
    incremental: bool = False  # sglang: incremental_streaming_output (default: cumulative events)
    reasoning: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 0  # responses, gemini: reasoning pieces first
    # worker.sim.labelled: answers right or wrong by construction (separation D), for calibration
    labelled: Annotated[float, msgspec.Meta(ge=0.0, le=10.0)] | None = None
    correct_rate: Annotated[float, msgspec.Meta(gt=0.0, lt=1.0)] = 0.7  # with labelled
    # a provider's rate limit (worker.sim.limits): at most `limit` streams at once and `limit_rps`
    # requests a second, per base model or over the server; 429 beyond, asking to wait `limit_retry_after`
    limit: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    limit_rps: Annotated[float, msgspec.Meta(gt=0.0, le=1_000_000.0)] | None = None
    limit_scope: Literal["model", "server"] = "model"
    limit_retry_after: Annotated[float, msgspec.Meta(ge=0.0, le=3600.0)] = 0.5


DIRECTIVE_NAMES: frozenset[str] = frozenset(Directives.__struct_fields__)


class DirectiveError(ValueError):
    """A directive is unknown or has a bad value; the message names it."""


class RequestError(Exception):
    """A request the simulator refuses: answered with ``status`` and the JSON ``payload``.

    Dialects raise it with the error body in their own provider's shape.
    """

    def __init__(self, status: int, payload: object) -> None:
        super().__init__(f"HTTP {status}: {payload!r}")
        self.status = status
        self.payload = payload


class SimRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A streaming request as every dialect sees it, with its directives resolved."""

    model: str  # base model name, directives removed
    key: str  # the model string as sent: fail_first and /stats count per key
    directives: Directives
    prompt: str
    max_new_tokens: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_n: int = 0
    refusal: StatusReply | None = None  # answered instead of a stream (the nologprobs directive)
    choices: int = 1  # chat/completions `n`: that many choices in one stream (server._generate_choices)
    ignored_n: bool = False  # `n` > 1 was asked for and ignored (the ignore_n directive)


def _pairs(text: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in text.split(";"):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        pairs[key.strip()] = value.strip() if eq else "1"
    return pairs


def parse_model(model: str) -> tuple[str, dict[str, str]]:
    """Split ``base;key=value;...`` into the base model name and its raw directives."""
    base, _, rest = model.partition(";")
    return base, _pairs(rest)


@functools.lru_cache(maxsize=256)
def parse_directives(text: str | None) -> Directives:
    """Directives from ``key=value;...`` text (e.g. ``SimConfig.fault``); ``None`` → defaults."""
    return _convert(_pairs(text) if text else {})


def _convert(raw: Mapping[str, Any]) -> Directives:
    unknown = sorted(set(raw) - DIRECTIVE_NAMES)
    if unknown:
        known = ", ".join(sorted(DIRECTIVE_NAMES))
        raise DirectiveError(f"unknown sim directive {unknown[0]!r} (known: {known})")
    try:
        return msgspec.convert(raw, Directives, strict=False)
    except msgspec.ValidationError as exc:
        raise DirectiveError(f"invalid sim directive: {exc}") from None


@functools.lru_cache(maxsize=1024)
def _resolve_text(model: str, default: str | None) -> tuple[str, Directives]:
    base, raw = parse_model(model)
    merged = dict(_pairs(default)) if default else {}
    merged.update(raw)
    return base, _convert(merged)


def resolve(
    model: str, sim: Mapping[str, Any] | None = None, default: str | None = None
) -> tuple[str, Directives]:
    """Base model name and directives: ``sim`` over the model name's over ``default``'s."""
    if not sim:
        return _resolve_text(model, default)
    base, raw = parse_model(model)
    merged: dict[str, Any] = dict(_pairs(default)) if default else {}
    merged.update(raw)
    merged.update(sim)
    return base, _convert(merged)


def fault_applies(directives: Directives, request_number: int) -> bool:
    """Whether the ``request_number``-th request (1-based) for its model string gets the fault."""
    if directives.fault is None:
        return False
    return directives.fail_first is None or request_number <= directives.fail_first


ECHO_HEADER = "X-Sim-Echo-Authorization"


def echo_key_text(authorization: str) -> str:
    """What ``fault=echo_key`` says: the request's ``Authorization`` as sent, and its bare key."""
    key = authorization.partition(" ")[2] or authorization
    return f"bad key {authorization}: the API key {key} is not valid for this model"


def echo_key_pieces(authorization: str) -> list[str]:
    """``echo=tokens``: :func:`echo_key_text` cut into tokens of 1, 3, 2, 1, 2, … characters, so
    the key and its Bearer form are split across many tokens at shifting places."""
    text, sizes, at = echo_key_text(authorization), (1, 3, 2, 1, 2), 0
    pieces: list[str] = []
    while at < len(text):
        size = sizes[len(pieces) % len(sizes)]
        pieces.append(text[at : at + size])
        at += size
    return pieces


class StatusReply(msgspec.Struct, frozen=True):
    """An error answer given instead of a stream."""

    status: int
    content_type: str
    body: bytes
    headers: dict[str, str]


_JSON_BODIES: dict[int, object] = {
    400: {"error": "Bad request"},
    401: {"error": "Unauthorized: missing or invalid API key"},
    402: {"error": {"message": "Insufficient balance"}},
    403: {"error": "Forbidden"},
    404: {"error": "Model not found"},
    413: {"error": "Request entity too large"},
    422: {"detail": [{"loc": ["body", "input"], "msg": "field required", "type": "value_error.missing"}]},
    423: {"error": "Model is locked"},
    429: {"error": {"message": "Model busy, retry later"}},
    500: {"error": "Internal server error"},
    502: {"error": {"message": "Bad gateway"}},
    503: {"error": {"message": "Service temporarily unavailable, please retry"}},
    504: {"error": {"message": "Gateway timeout"}},
}


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _body(status: int, kind: str) -> tuple[str, bytes]:
    title = f"{status} {_phrase(status)}"
    if kind == "html":  # what an nginx or load-balancer error page looks like
        page = (
            f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
            f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
            "</body>\r\n</html>\r\n"
        )
        return "text/html", page.encode()
    if kind == "text":
        return "text/plain; charset=utf-8", title.encode()
    if kind == "empty":
        return "application/octet-stream", b""
    payload = _JSON_BODIES.get(status, {"error": {"message": _phrase(status)}})
    return "application/json", msgspec.json.encode(payload)


def status_reply(directives: Directives, now: float | None = None) -> StatusReply:
    """The HTTP error for ``fault=status``: realistic body and optional ``Retry-After``."""
    content_type, body = _body(directives.status, directives.body)
    headers: dict[str, str] = {}
    wait = directives.retry_after
    if directives.retry_after_date:
        when = (time.time() if now is None else now) + (1.0 if wait is None else wait)
        headers["Retry-After"] = formatdate(when, usegmt=True)
    elif wait is not None:
        headers["Retry-After"] = str(math.ceil(wait))
    return StatusReply(directives.status, content_type, body, headers)


def echo_key_reply(directives: Directives, authorization: str) -> StatusReply:
    """``fault=echo_key`` answered in the response's head: ``echo=status`` is an HTTP 401 whose
    body and ``WWW-Authenticate`` echo the key; ``echo=header`` a 200 JSON answer (not a stream)
    whose content type and :data:`ECHO_HEADER` carry it."""
    key = authorization.partition(" ")[2] or authorization
    body = msgspec.json.encode({"error": echo_key_text(authorization)})
    if directives.echo == "status":
        challenge = f'Bearer realm="sim", error="invalid_token", error_description="{authorization}"'
        return StatusReply(401, "application/json", body, {"WWW-Authenticate": challenge})
    return StatusReply(200, f"application/json; key={key}", body, {ECHO_HEADER: authorization})
