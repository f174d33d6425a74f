"""open_sse() parses each upstream URL once (the parse is remembered per URL string): the requests
still go to exactly that URL, a URL httpx refuses still fails as "bad upstream URL" naming no secret, and the
memo is bounded; the worker's client keeps no cookie between requests."""

from __future__ import annotations

import httpx
import pytest

from worker.upstream.base import UpstreamError
from worker.upstream.http import StreamLimits, UpstreamClient, _parsed, open_sse

API_KEY = "sk-test-0123456789abcdef"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
LIMITS = StreamLimits(max_event_bytes=64 * 1024, max_stream_bytes=1024 * 1024, max_tokens=100)


async def test_every_request_goes_to_its_own_url_with_its_headers() -> None:
    seen: list[tuple[str, str | None]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("authorization")))
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=b'data: {"a":1}\n\n'
        )

    urls = ["https://a.test/v1/m1?x=1", "https://b.test:8443/v1/m%202", "https://a.test/v1/m1?x=1"]
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        for url in urls:
            async with open_sse(client, url, b"{}", HEADERS, LIMITS) as events:
                assert [data async for data in events] == ['{"a":1}']
    assert seen == [(url, f"Bearer {API_KEY}") for url in urls]
    assert _parsed("https://a.test/v1/m1?x=1") is _parsed("https://a.test/v1/m1?x=1")  # one parse


@pytest.mark.parametrize("url", ["https://[::1/v1", "https://exa\x00mple.test/v1", "https://a.test:x/v1"])
async def test_a_bad_url_fails_as_before(url: str) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:  # pragma: no cover - never reached
        raise AssertionError("no request may be sent")

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(UpstreamError) as info:
            async with open_sse(client, url, b"{}", HEADERS, LIMITS):
                pass
    assert info.value.code == "upstream_connection_error"
    assert info.value.message.startswith("bad upstream URL: ")
    assert API_KEY not in info.value.message
    assert _parsed(url) is None


def test_the_memo_is_bounded() -> None:
    assert _parsed.cache_info().maxsize == 1024


async def test_the_upstream_client_keeps_no_cookie_between_requests() -> None:
    sent: list[str | None] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get("cookie"))
        headers = {"content-type": "text/event-stream", "set-cookie": "session=tenant-a; Path=/"}
        return httpx.Response(200, headers=headers, content=b'data: {"a":1}\n\n')

    async with UpstreamClient(transport=httpx.MockTransport(handler)) as client:
        for _ in range(2):  # another tenant's job to the same upstream: no cookie of the first
            async with open_sse(client, "https://a.test/v1/m", b"{}", HEADERS, LIMITS) as events:
                assert [data async for data in events] == ['{"a":1}']
        assert len(client.cookies) == 0
    assert sent == [None, None]


def test_the_worker_http_client_is_the_cookieless_one() -> None:
    from worker.connect import http_client
    from worker.settings import Settings

    for transport in ("aiohttp", "httpx"):
        assert isinstance(http_client(Settings(upstream_transport=transport)), UpstreamClient)
