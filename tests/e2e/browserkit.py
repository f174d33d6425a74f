"""Headless Chromium for the gateway's browser tests, and a TCP proxy that can cut its connections.

Chromium is Debian's (``/usr/bin/chromium``) driven through Debian's ``/usr/bin/chromedriver`` by
Selenium with an explicit :class:`Service`, so Selenium Manager never runs and nothing is
downloaded; every background connection Chromium would make is switched off (the machine's network
refuses them), and each browser gets a fresh profile directory.

:class:`CutProxy` sits between the browser and the gateway on loopback; :meth:`CutProxy.cut` closes
every connection from the server's side (FIN to the browser), which is what a load balancer or a
restarting gateway does to an open event stream. It keeps the bytes the browser sent, so a test can
read the requests it made (``after=``, ``Last-Event-ID``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

__all__ = ["CHROMEDRIVER", "CHROMIUM", "CutProxy", "Request", "browser_missing", "chromium"]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "gateway"
MAX_RECORDED = 1 << 20  # bytes of requests kept per connection

CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",  # as root Chromium refuses to start without it
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-dev-shm-usage",
    "--metrics-recording-only",
    "--window-size=1100,900",
)


def browser_missing() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(path) is None:
            return f"{path} is not installed (make chromium installs Debian's chromium and chromium-driver)"
    return None


@contextlib.contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    """A headless Chromium with a fresh profile, quit (and its profile removed) afterwards."""
    profile = tempfile.mkdtemp(prefix="tokenwire-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (*CHROMIUM_ARGS, f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(30)
        driver.set_script_timeout(30)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(driver: webdriver.Chrome, name: str) -> Path:
    """Save a screenshot under tests/artifacts/gateway/ (ignored by git); returns its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"no screenshot written to {path}"
    print(f"screenshot: {path}")
    return path


_HEAD = re.compile(rb"(GET|POST|OPTIONS|HEAD|DELETE|PUT) (\S+) HTTP/1\.1\r\n((?:[^\r\n]*\r\n)*?)\r\n")


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: dict[str, str]  # names in lower case


class CutProxy:
    """A loopback TCP proxy to ``127.0.0.1:target`` on its own event loop thread."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cut-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._sent: list[bytearray] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self.connections = 0

    def __enter__(self) -> CutProxy:
        self._thread.start()
        self._call(self._start()).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._stop()).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _call(self, coro: object) -> Future[int]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut()
        if self._handlers:  # every connection's sockets closed before the loop goes
            await asyncio.wait(set(self._handlers), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._handlers.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.target), 10
            )
        except (OSError, TimeoutError):
            writer.close()
            return
        self.connections += 1
        pair = (writer, up_writer)
        self._open.add(pair)
        sent = bytearray()
        self._sent.append(sent)
        try:
            await asyncio.gather(self._pump(reader, up_writer, sent), self._pump(up_reader, writer, None))
        finally:
            self._open.discard(pair)
            for w in pair:
                w.close()

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, keep: bytearray | None
    ) -> None:
        try:
            while data := await reader.read(65536):
                if keep is not None and len(keep) < MAX_RECORDED:
                    keep += data
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(OSError):
                writer.close()

    async def _cut(self) -> int:
        pairs = list(self._open)
        for browser_side, gateway_side in pairs:
            browser_side.close()  # FIN: the server closed the connection
            gateway_side.transport.abort()
        self._open.clear()
        return len(pairs)

    def cut(self) -> int:
        """Close every open connection from the server's side; returns how many there were."""
        return self._call(self._cut()).result(10)

    def requests(self) -> list[Request]:
        """Every request head the browser sent, in the order of its connections."""
        found = []
        for sent in list(self._sent):
            for method, target, raw in _HEAD.findall(bytes(sent)):
                headers = {}
                for line in raw.decode("latin-1").split("\r\n"):
                    name, sep, value = line.partition(":")
                    if sep:
                        headers[name.strip().lower()] = value.strip()
                found.append(Request(method.decode(), target.decode("latin-1"), headers))
        return found
