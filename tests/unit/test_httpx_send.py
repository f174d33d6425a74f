"""worker.fastpath.httpx_send on httpx.MockTransport: the worker's client sends exactly the request
httpx would build (method, URL, every header in order, body, timeouts), answers as httpx does
(a redirect's ``next_request``, a closed client's error, the response closed on exit), re-merges
when the client's own headers change, and leaves to httpx every client or call its layers would
change (auth, cookies, hooks, params, redirects followed, user info, other arguments), and
everything when the probe finds the internals changed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from worker.fastpath import httpx_send
from worker.upstream.client import FastUpstreamClient
from worker.upstream.http import StreamLimits, UpstreamClient, open_sse

pytestmark = pytest.mark.unit

URL = httpx.URL("https://up.test:8443/v1/inference/m%202?alt=sse")
HEADERS = {"Accept-Encoding": "identity", "Authorization": "Bearer sk-test-0123456789", "X-A": "1"}
LIMITS = StreamLimits(max_event_bytes=64 * 1024, max_stream_bytes=1024 * 1024, max_tokens=100)
Handler = Callable[[httpx.Request], httpx.Response]


def _sse(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=b'data: {"a":1}\n\n')


def _seen(kind: type[httpx.AsyncClient], handler: Handler = _sse, **options: Any) -> tuple[Any, list[Any]]:
    seen: list[Any] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url, request.headers.raw, request.content, request.extensions))
        return handler(request)

    options.setdefault("timeout", httpx.Timeout(30.0, connect=5.0, read=None))
    return kind(transport=httpx.MockTransport(record), follow_redirects=False, **options), seen


@pytest.fixture(autouse=True)
def _fresh() -> None:
    httpx_send._merges.clear()
    httpx_send.probe()


def test_the_probe_finds_the_internals() -> None:
    found = httpx_send.probe()
    assert found.available, found.reason


async def test_open_sse_sends_what_httpx_sends() -> None:
    ours, sent = _seen(FastUpstreamClient)
    theirs, expected = _seen(UpstreamClient)
    for client in (ours, theirs):
        async with client:
            for body in (b'{"input":"a"}', b'{"input":"bb"}'):  # the second from the kept merge
                async with open_sse(client, str(URL), body, HEADERS, LIMITS) as events:
                    assert [data async for data in events] == ['{"a":1}']
    assert sent == expected and len(sent) == 2
    assert httpx_send._merges  # the fast path was taken


async def test_a_redirect_is_not_followed_and_says_where_it_leads() -> None:
    def moved(request: httpx.Request) -> httpx.Response:
        return httpx.Response(307, headers={"location": "https://elsewhere.test/x"})

    answers = []
    for kind in (FastUpstreamClient, UpstreamClient):
        client, _ = _seen(kind, moved)
        async with client, client.stream("POST", URL, content=b"{}", headers=dict(HEADERS)) as response:
            assert response.next_request is not None
            answers.append((response.status_code, response.next_request.method, response.next_request.url))
        assert response.is_closed
    assert answers[0] == answers[1] == (307, "POST", httpx.URL("https://elsewhere.test/x"))


async def test_a_closed_client_refuses_as_httpx_does() -> None:
    client, sent = _seen(FastUpstreamClient)
    await client.aclose()
    with pytest.raises(RuntimeError, match="client has been closed"):
        async with client.stream("POST", URL, content=b"{}", headers=dict(HEADERS)):
            pass
    assert sent == []


async def test_the_clients_own_headers_changing_are_merged_again() -> None:
    client, sent = _seen(FastUpstreamClient)
    async with client:
        for value in ("1", "2"):
            client.headers["X-Tenant"] = value
            async with client.stream("POST", URL, content=b"{}", headers=dict(HEADERS)):
                pass
    assert [dict(raw)[b"X-Tenant"] for _, _, raw, _, _ in sent] == [b"1", b"2"]


def _hooked(client: httpx.AsyncClient) -> None:
    async def hook(request: httpx.Request) -> None:
        return None

    client.event_hooks = {"request": [hook], "response": []}


CASES: dict[
    str, tuple[dict[str, Any], Callable[[httpx.AsyncClient], None], httpx.URL | str, dict[str, Any]]
] = {
    "auth": ({"auth": ("u", "p")}, lambda c: None, URL, {}),
    "params": ({"params": {"k": "v"}}, lambda c: None, URL, {}),
    "hooks": ({}, _hooked, URL, {}),
    "redirects followed": ({}, lambda c: setattr(c, "follow_redirects", True), URL, {}),
    "user info": ({}, lambda c: None, httpx.URL("https://u:p@up.test/v1"), {}),
    "a str URL": ({}, lambda c: None, str(URL), {}),
    "another argument": ({}, lambda c: None, URL, {"timeout": 3.0}),
    "headers not a dict": ({}, lambda c: None, URL, {"headers": list(HEADERS.items())}),
}


@pytest.mark.parametrize("case", CASES)
async def test_what_httpx_layers_would_change_goes_through_httpx(case: str) -> None:
    options, change, url, extra = CASES[case]
    ours, sent = _seen(FastUpstreamClient, **options)
    theirs, expected = _seen(UpstreamClient, **options)
    kwargs: dict[str, Any] = {"content": b"{}", "headers": dict(HEADERS), **extra}
    for client in (ours, theirs):
        change(client)
        async with client:
            assert httpx_send.stream(client, "POST", url, **kwargs) is None
            async with client.stream("POST", url, **kwargs) as response:
                assert response.status_code == 200
    assert sent == expected and len(sent) == 1


async def test_a_client_with_cookies_goes_through_httpx() -> None:
    client, _ = _seen(httpx.AsyncClient, cookies={"session": "s"})
    async with client:
        assert httpx_send.stream(client, "POST", URL, content=b"{}", headers=dict(HEADERS)) is None


async def test_changed_internals_leave_every_request_to_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpx.AsyncClient, "_build_redirect_request", None)
    found = httpx_send.probe()
    assert not found.available and "_build_redirect_request" in found.reason
    ours, sent = _seen(FastUpstreamClient)
    async with ours:
        assert httpx_send.stream(ours, "POST", URL, content=b"{}", headers=dict(HEADERS)) is None
        async with ours.stream("POST", URL, content=b"{}", headers=dict(HEADERS)) as response:
            assert response.status_code == 200
    assert len(sent) == 1
    monkeypatch.undo()
    assert httpx_send.probe().available


def test_the_kept_merges_are_bounded() -> None:
    client = httpx.AsyncClient(transport=httpx.MockTransport(_sse), trust_env=False)
    for i in range(httpx_send._MERGED_LIMIT + 10):
        httpx_send._merged(client, {"X-N": str(i)}, b"up.test" if i % 2 else None)
    assert len(httpx_send._merges) <= httpx_send._MERGED_LIMIT


BODIES = {"a body": b'{"input":"a"}', "an empty body": b""}
GIVEN = {"nothing httpx fills in": {}, "Host": {"Host": "other.test"}, "a size": {"Content-Length": "13"}}


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("given", GIVEN)
async def test_every_body_and_header_set_is_sent_as_httpx_sends_it(body: str, given: str) -> None:
    # the fast build fills in Host and Content-Length itself; a header set naming either (or an
    # empty body, whose size httpx writes elsewhere) is built by httpx: the wire is the same
    headers = {**HEADERS, **GIVEN[given]}
    ours, sent = _seen(FastUpstreamClient)
    theirs, expected = _seen(UpstreamClient)
    for client in (ours, theirs):
        async with client:
            for _ in range(2):  # the second from the kept merge
                request = client.stream("POST", URL, content=BODIES[body], headers=dict(headers))
                async with request as response:
                    assert response.status_code == 200
    assert sent == expected and len(sent) == 2
    fast = any(merged is not None and key[1] is not None for key, (_, merged) in httpx_send._merges.items())
    assert fast is (given == "nothing httpx fills in" and body == "a body")  # which build each took


def test_the_probe_refuses_a_build_that_differs_from_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    # httpx changing how it fills in its headers (here: Content-Length first) is found at start-up
    # and every request then goes through httpx's own layers
    prepare = httpx.Request._prepare

    def first(self: httpx.Request, default_headers: dict[str, str]) -> None:
        prepare(self, default_headers)
        self.headers = httpx.Headers(sorted(self.headers.raw, key=lambda item: item[0] != b"Content-Length"))

    monkeypatch.setattr(httpx.Request, "_prepare", first)
    found = httpx_send.probe()
    assert not found.available and "differs from httpx.AsyncClient.build_request" in found.reason
    monkeypatch.undo()
    assert httpx_send.probe().available
