"""aiohttp's reader behind a response of httpx-aiohttp's transport (component ``aiohttp``).

httpx wraps the transport's byte stream (``httpx._client.BoundAsyncStream``, kept as ``_stream``);
httpx-aiohttp's stream (``AiohttpResponseStream``, not exported) keeps the aiohttp response as
``_aiohttp_response``, and its ``map_aiohttp_exceptions`` (not exported either) turns aiohttp's
exceptions into httpx's. Reading ``content`` of that response directly skips the four async
generators httpx's ``aiter_bytes`` puts between the socket and the parser. When :func:`probe` finds
any of this changed, :func:`aiohttp_content` returns ``None`` and the caller reads through httpx.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from typing import NamedTuple

import aiohttp
import httpx

from worker.fastpath import Probe, Remembered

__all__ = ["COMPONENT", "aiohttp_content", "aiohttp_errors", "probe"]

COMPONENT = "aiohttp"
_TRANSPORT = "httpx_aiohttp.transport"
_CLIENT = "httpx._client"

ErrorMap = Callable[[], contextlib.AbstractContextManager[None]]


class _Found(NamedTuple):
    stream_class: type[httpx.AsyncByteStream]
    errors: ErrorMap


def probe() -> Probe:
    """Look for the internals, check their shapes and the error mapping, remember the answer."""
    return _memo.probe()


def _active() -> _Found | None:
    return _memo.found()


def aiohttp_content(response: httpx.Response) -> aiohttp.StreamReader | None:
    """The aiohttp reader behind a response of httpx-aiohttp's transport, else ``None`` (another
    transport's response, or internals the last :func:`probe` did not find)."""
    found = _active()
    if found is None:
        return None
    inner = getattr(response.stream, "_stream", None)
    if not isinstance(inner, found.stream_class):
        return None
    content = getattr(getattr(inner, "_aiohttp_response", None), "content", None)
    return content if isinstance(content, aiohttp.StreamReader) else None


def aiohttp_errors() -> contextlib.AbstractContextManager[None]:
    """Around reads of :func:`aiohttp_content`: aiohttp's exceptions raised as httpx-aiohttp's own
    stream raises them (``httpx.ReadError`` and the like)."""
    found = _active()
    return found.errors() if found is not None else contextlib.nullcontext()


def _resolve() -> tuple[_Found | None, str]:
    try:
        transport, client = importlib.import_module(_TRANSPORT), importlib.import_module(_CLIENT)
    except ImportError as exc:
        return None, f"cannot import {exc.name or 'a module'} ({exc})"
    stream_class = getattr(transport, "AiohttpResponseStream", None)
    if not (isinstance(stream_class, type) and issubclass(stream_class, httpx.AsyncByteStream)):
        return None, f"{_TRANSPORT}.AiohttpResponseStream is missing or not an httpx.AsyncByteStream"
    errors = getattr(transport, "map_aiohttp_exceptions", None)
    if not callable(errors):
        return None, f"{_TRANSPORT}.map_aiohttp_exceptions is missing"
    bound = getattr(client, "BoundAsyncStream", None)
    if not isinstance(bound, type):
        return None, f"{_CLIENT}.BoundAsyncStream is missing"
    try:
        problem = _self_test(stream_class, errors, bound)
    except Exception as exc:  # any failure of a private API means: do not use it
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        return None, problem
    return _Found(stream_class, errors), "aiohttp's reader is read directly, with httpx-aiohttp's errors"


def _self_test(stream_class: type[httpx.AsyncByteStream], errors: ErrorMap, bound: type) -> str | None:
    """Constructing the streams does no I/O (they only keep what they are given)."""
    marker = object()
    if getattr(stream_class(marker), "_aiohttp_response", None) is not marker:  # type: ignore[call-arg]
        return f"{_TRANSPORT}.AiohttpResponseStream no longer keeps the aiohttp response as _aiohttp_response"
    inner = httpx.ByteStream(b"")
    if getattr(bound(inner, response=httpx.Response(200), start=0.0), "_stream", None) is not inner:
        return f"{_CLIENT}.BoundAsyncStream no longer keeps the transport's stream as _stream"
    try:
        with errors():
            raise aiohttp.ClientPayloadError("probe")
    except httpx.ReadError:
        return None
    except Exception as exc:
        return f"{_TRANSPORT}.map_aiohttp_exceptions turns ClientPayloadError into {type(exc).__name__}"
    return f"{_TRANSPORT}.map_aiohttp_exceptions swallows ClientPayloadError"


_memo: Remembered[_Found] = Remembered(COMPONENT, _resolve)
