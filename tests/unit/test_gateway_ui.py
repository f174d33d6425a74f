"""The gateway page's files: served with a strict Content-Security-Policy, nothing from another origin,
no inline script or style, and no server string ever parsed as HTML. (The browser tests in
tests/e2e/test_gateway_browser.py drive the page itself.)"""

from __future__ import annotations

import re

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from worker.gateway.ui import ASSETS, CONTENT_SECURITY_POLICY, UI_DIR, add_ui_routes

HTML = (UI_DIR / "index.html").read_text()
JS = (UI_DIR / "app.js").read_text()
CSS = (UI_DIR / "style.css").read_text()


async def _client() -> TestClient[web.Request, web.Application]:
    app = web.Application()
    add_ui_routes(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.mark.parametrize("path", sorted(ASSETS))
async def test_every_file_is_served_with_the_policy_and_its_type(path: str) -> None:
    client = await _client()
    try:
        response = await client.get(path)
        assert response.status == 200
        name, content_type = ASSETS[path]
        assert response.headers["Content-Type"] == content_type
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"  # the address holds a read token
        assert await response.read() == (UI_DIR / name).read_bytes()
        head = await client.head(path)
        assert head.status == 200
    finally:
        await client.close()


async def test_the_page_with_a_query_is_the_page_and_other_paths_are_not_found() -> None:
    client = await _client()
    try:
        watched = await client.get("/?job=j1&token=abc")
        assert watched.status == 200 and "<title>tokenwire gateway</title>" in await watched.text()
        assert (await client.get("/ui/missing.js")).status == 404
        assert (await client.get("/ui/../ui.py")).status == 404
        assert (await client.post("/")).status == 405
    finally:
        await client.close()


def test_the_policy_allows_this_origin_only_and_nothing_inline() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["default-src"] == "'none'"
    for name in ("script-src", "style-src", "connect-src", "img-src"):
        assert directives[name] == "'self'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    assert directives["frame-ancestors"] == "'none'" and directives["form-action"] == "'none'"


def test_the_files_load_nothing_from_another_origin_and_nothing_inline() -> None:
    for text in (HTML, JS, CSS):
        assert not re.search(r"(?i)\b(?:https?:)?//[a-z0-9]", text.replace("http://www.w3.org/2000/svg", ""))
    assert not re.search(r"(?i)<script(?![^>]*\bsrc=)[^>]*>", HTML)  # every script is a file
    assert not re.search(r"(?i)\sstyle=", HTML)
    assert not re.search(r"(?i)\son[a-z]+=", HTML)  # no inline handlers
    assert "<style" not in HTML


def test_server_strings_are_never_parsed_as_html() -> None:
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in JS
    assert "textContent" in JS


def test_the_key_is_never_stored() -> None:
    for store in ("localStorage", "sessionStorage", "document.cookie", "indexedDB"):
        assert store not in JS
    assert 'credentials: "omit"' in JS  # and no cookie travels with the requests either
