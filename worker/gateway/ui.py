"""The gateway's page (``GET /`` when ``gateway_ui = true``): plain HTML, JS and CSS from ``ui/``.

No build step, nothing from another origin: the page, its script, its style sheet and its icon are
files of this package, served with a strict Content-Security-Policy (scripts, styles and connections
to this origin only; no inline script or style, no frames, no form posts) and ``Referrer-Policy:
no-referrer``, because a watching page's address holds its read token (``/?job=ID&token=…``).

The gateway mounts it with :func:`add_ui_routes`; the files are read once, when it is called.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import MappingProxyType

from aiohttp import web

__all__ = ["ASSETS", "CONTENT_SECURITY_POLICY", "UI_DIR", "add_ui_routes", "ui_headers"]

UI_DIR = Path(__file__).with_name("ui")

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

# served path -> (file under ui/, content type)
ASSETS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "/": ("index.html", "text/html; charset=utf-8"),
        "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
        "/ui/style.css": ("style.css", "text/css; charset=utf-8"),
        "/ui/icon.svg": ("icon.svg", "image/svg+xml"),
    }
)


def ui_headers(content_type: str) -> dict[str, str]:
    """The headers of every file of the page."""
    return {
        "Content-Type": content_type,
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Cache-Control": "no-cache",
    }


def _handler(body: bytes, content_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    headers = ui_headers(content_type)

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body, headers=headers)

    return serve


def add_ui_routes(app: web.Application, gateway: object | None = None, directory: Path = UI_DIR) -> None:
    """Mount the page's files on ``app`` (``GET``/``HEAD``); reads them from ``directory`` now.

    ``gateway`` (the :class:`~worker.gateway.app.Gateway` mounting it) is not needed: the page talks
    to the API it serves over HTTP only, like any client."""
    for path, (name, content_type) in ASSETS.items():
        body = (directory / name).read_bytes()
        app.router.add_get(path, _handler(body, content_type))
