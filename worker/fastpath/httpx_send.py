"""httpx's streaming request without its per-request layers (component ``httpx_send``).

``AsyncClient.stream`` merges the client's URL, headers, cookies and params into a new request and
sends it through the auth flow and the redirect loop before ``_send_single_request`` hands it to
the transport. For a client with no params, cookies, auth, event hooks or redirects followed and
an absolute URL, all of that does nothing but cost ~30-60 µs a request (a short job's request is
a tenth of its CPU). :func:`stream` builds the same request, its merged headers kept per distinct
header set (``_merge_headers``, re-merged when the client's own headers change), and sends it
with ``_send_single_request``, setting ``next_request`` on a redirect as the loop does when it
does not follow. A request with a body is built without httpx's header defaulting (``Host``, kept
with the merged headers per netloc, and ``Content-Length`` written as httpx writes them; ~45 → ~8
µs). Anything else (another kind of argument, a client with any of those set, a URL with user
info, which means basic auth) goes through ``AsyncClient.stream``: :func:`stream` returns ``None``.
When :func:`probe` finds the internals changed (the request built here differs from
``build_request``'s), it always returns ``None``.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, NamedTuple, overload

import httpx

from worker.fastpath import Probe, Remembered

__all__ = ["COMPONENT", "probe", "stream"]

COMPONENT = "httpx_send"
_CLIENT = "httpx._client"
_MERGED_LIMIT = 256
"""Distinct header sets whose merge is kept (one per provider and key, in practice)."""


class _Found(NamedTuple):
    closed: object  # httpx._client.ClientState.CLOSED
    opened: object  # httpx._client.ClientState.OPENED


def probe() -> Probe:
    """Look for the internals, check the request built here is ``build_request``'s, remember."""
    return _memo.probe()


def stream(
    client: httpx.AsyncClient, method: str, url: httpx.URL | str, **kwargs: Any
) -> AbstractAsyncContextManager[httpx.Response] | None:
    """``client.stream(method, url, **kwargs)`` without httpx's per-request layers, or ``None``
    when those layers would do something for this client, URL or arguments."""
    found = _memo.found()
    if found is None or not isinstance(url, httpx.URL) or not _plain(client, url, kwargs):
        return None
    return _stream(client, found, _request(client, method, url, kwargs.get("content"), kwargs["headers"]))


def _plain(client: httpx.AsyncClient, url: httpx.URL, kwargs: Mapping[str, Any]) -> bool:
    """Whether ``client.stream`` would merge nothing, authenticate nothing and follow nothing."""
    if kwargs.keys() - {"content", "headers"} or type(kwargs.get("headers")) is not dict:
        return False
    content = kwargs.get("content")
    if content is not None and not isinstance(content, bytes):
        return False
    if not url.is_absolute_url or url.userinfo:
        return False
    hooks = client.event_hooks  # (a base URL is not merged into an absolute URL)
    return not (
        client.follow_redirects
        or client.max_redirects < 0
        or client.auth is not None
        or client.cookies
        or client.params
        or hooks.get("request")
        or hooks.get("response")
    )


def _request(
    client: httpx.AsyncClient, method: str, url: httpx.URL, content: bytes | None, headers: dict[str, str]
) -> httpx.Request:
    """The request ``client.build_request`` builds, its merged headers from the cache.

    For a non-empty body and headers that name neither ``Host`` nor the body's size (the case of
    every upstream request), the request is built as httpx builds it, without its header
    defaulting: ``Host`` first (kept with the merged headers, per netloc), the merged headers,
    ``Content-Length`` last, the body as its stream, already read (~11 µs against ~45)."""
    extensions = {"timeout": client.timeout.as_dict()}
    if not content:
        merged = _merged(client, headers, None)
        return httpx.Request(method, url, content=content, headers=merged, extensions=extensions)
    hosted = _merged(client, headers, url.netloc)
    if hosted is None:
        merged = _merged(client, headers, None)
        return httpx.Request(method, url, content=content, headers=merged, extensions=extensions)
    stream = httpx.ByteStream(content)
    request = httpx.Request(method, url, headers=hosted, stream=stream, extensions=extensions)
    request.headers["Content-Length"] = str(len(content))
    request.read()
    return request


_Key = tuple[tuple[tuple[str, str], ...], bytes | None]  # the call's headers, the netloc (or None)
_merges: dict[_Key, tuple[tuple[tuple[bytes, bytes], ...], httpx.Headers | None]] = {}
_OWN_DEFAULTS = frozenset({b"host", b"content-length", b"transfer-encoding"})
"""Headers httpx fills in itself unless given: given any, the request is built by httpx."""


@overload
def _merged(client: httpx.AsyncClient, headers: dict[str, str], netloc: None) -> httpx.Headers: ...
@overload
def _merged(client: httpx.AsyncClient, headers: dict[str, str], netloc: bytes) -> httpx.Headers | None: ...
def _merged(client: httpx.AsyncClient, headers: dict[str, str], netloc: bytes | None) -> httpx.Headers | None:
    """``client._merge_headers(headers)``, kept per header set while the client's own headers stay
    the same; with ``netloc``, ``Host: netloc`` first, or ``None`` when the merged headers name
    ``Host`` or a body size themselves. (The request copies it: the kept one is never changed.)"""
    key = (tuple(headers.items()), netloc)
    own = tuple(client.headers.raw)
    kept = _merges.get(key)
    if kept is not None and kept[0] == own:
        return kept[1]
    merged: httpx.Headers | None = httpx.Headers(client._merge_headers(headers))
    if netloc is not None and merged is not None:
        raw = merged.raw
        given = {name.lower() for name, _ in raw}
        merged = None if given & _OWN_DEFAULTS else httpx.Headers([(b"Host", netloc), *raw])
    if len(_merges) >= _MERGED_LIMIT:
        _merges.clear()
    _merges[key] = (own, merged)
    return merged


@contextlib.asynccontextmanager
async def _stream(
    client: httpx.AsyncClient, found: _Found, request: httpx.Request
) -> AsyncIterator[httpx.Response]:
    """``send(request, stream=True)`` for a plain client (see :func:`_plain`), closed on exit."""
    state: Any = client
    if state._state is found.closed:
        raise RuntimeError("Cannot send a request, as the client has been closed.")
    state._state = found.opened
    response: httpx.Response = await state._send_single_request(request)
    try:
        if response.has_redirect_location:  # not followed: where it leads, as httpx says it
            response.next_request = state._build_redirect_request(request, response)
        yield response
    finally:
        await response.aclose()


def _resolve() -> tuple[_Found | None, str]:
    try:
        module = importlib.import_module(_CLIENT)
    except ImportError as exc:
        return None, f"cannot import {_CLIENT} ({exc})"
    states = getattr(module, "ClientState", None)
    closed, opened = getattr(states, "CLOSED", None), getattr(states, "OPENED", None)
    if closed is None or opened is None:
        return None, f"{_CLIENT}.ClientState.CLOSED/OPENED are missing"
    for name in ("_merge_headers", "_send_single_request", "_build_redirect_request"):
        if not callable(getattr(httpx.AsyncClient, name, None)):
            return None, f"httpx.AsyncClient.{name} is missing"
    try:
        problem = _self_test()
    except Exception as exc:  # any failure of a private API means: do not use it
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        return None, problem
    return _Found(closed, opened), "requests built with the client's headers merged once, sent directly"


def _self_test() -> str | None:
    """The request built here equals ``build_request``'s (no I/O: a client is only built)."""
    never = httpx.MockTransport(lambda request: httpx.Response(599))  # given: no transport (or TLS) set up
    client = httpx.AsyncClient(
        headers={"X-Client": "1"}, timeout=httpx.Timeout(5.0, connect=2.0), transport=never, trust_env=False
    )
    if getattr(client, "_state", None) is None:
        return "httpx.AsyncClient has no _state"
    url = httpx.URL("http://probe.invalid:8080/v1/x?y=1")
    headers = {"Accept-Encoding": "identity", "Authorization": "Bearer k", "Accept": "text/event-stream"}
    hosted = {**headers, "Host": "elsewhere.invalid"}  # built by httpx: Host is given
    cases = [(headers, b'{"a":1}'), (headers, b'{"b":22}'), (headers, b""), (hosted, b'{"c":3}')]
    for given, body in cases * 2:  # the second round from the cache
        built = _request(client, "POST", url, body, dict(given))
        theirs = client.build_request("POST", url, content=body, headers=dict(given))
        if (built.method, built.url, built.headers.raw, built.content, built.extensions) != (
            theirs.method,
            theirs.url,
            theirs.headers.raw,
            theirs.content,
            theirs.extensions,
        ) or (built.headers.encoding, type(built.stream)) != (theirs.headers.encoding, type(theirs.stream)):
            return "the request built here differs from httpx.AsyncClient.build_request's"
    _merges.clear()
    return None


_memo: Remembered[_Found] = Remembered(COMPONENT, _resolve)
