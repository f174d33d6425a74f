"""Helpers for the gateway's integration tests: an in-process gateway, tenants, an SSE reader."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from worker.gateway.app import Gateway
from worker.gateway.server import build_gateway, serve_gateway
from worker.settings import Settings, Tenant

SECRET = "gateway-test-secret-0123456789abcdef"
KEYS = {
    "acme": "acme-key-0123456789abcdef",
    "bolt": "bolt-key-0123456789abcdef",
    "ops": "ops-key-0123456789abcdef",
}
ORIGIN_A = "http://acme.example:3000"
ORIGIN_B = "http://bolt.example"


def key_sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def tenants(**overrides: dict[str, Any]) -> dict[str, Tenant]:
    base: dict[str, dict[str, Any]] = {
        "acme": {"origins": [ORIGIN_A]},
        "bolt": {"origins": [ORIGIN_B]},
        "ops": {"read_unscoped": True},
    }
    for name, extra in overrides.items():
        base[name] = {**base.get(name, {}), **extra}
    return {name: Tenant(key_sha256=key_sha256(KEYS[name]), **spec) for name, spec in base.items()}


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


@dataclass
class RunningGateway:
    url: str
    settings: Settings
    task: asyncio.Task[None]
    stop: asyncio.Event
    gateway: Gateway

    async def shutdown(self) -> None:
        self.stop.set()
        async with asyncio.timeout(20):
            await self.task


async def start_gateway(settings: Settings) -> RunningGateway:
    stop = asyncio.Event()
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    gateway = build_gateway(settings, {"TOKENWIRE_GATEWAY_SECRET": SECRET})
    task = asyncio.create_task(serve_gateway(settings, stop, ready=ready.set_result, gateway=gateway))
    waiters: list[asyncio.Future[Any]] = [task, ready]
    await asyncio.wait(waiters, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raises what stopped it
        raise AssertionError("the gateway stopped before it listened")
    return RunningGateway(ready.result(), settings, task, stop, gateway)


@dataclass
class Sse:
    """What an SSE response carried: events (id, type, data), comments, and how it ended."""

    status: int
    headers: httpx.Headers
    events: list[tuple[str, str, str]] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: str | None = None
    body: bytes = b""

    @property
    def ids(self) -> list[str]:
        return [e[0] for e in self.events]

    @property
    def types(self) -> list[str]:
        return [e[1] for e in self.events]


def parse_sse(text: str, out: Sse) -> None:
    """Parse complete SSE blocks of ``text`` into ``out`` (as an EventSource would)."""
    for block in text.split("\n\n"):
        if not block:
            continue
        ident = kind = None
        data: list[str] = []
        for line in block.split("\n"):
            if line.startswith(":"):
                out.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "id":
                ident = value
            elif name == "event":
                kind = value
            elif name == "data":
                data.append(value)
            elif name == "retry":
                out.retry = value
        if data:
            out.events.append((ident or "", kind or "message", "\n".join(data)))


async def read_sse(
    http: httpx.AsyncClient,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    stop_after: int | None = None,
    on_event: Callable[[Sse], None] | None = None,
    timeout: float = 30.0,
) -> Sse:
    """GET an event stream; reads until the server closes it (or ``stop_after`` events, then drops
    the connection mid-stream, as a killed client would)."""
    async with asyncio.timeout(timeout), http.stream("GET", url, headers=headers, params=params) as resp:
        out = Sse(resp.status_code, resp.headers)
        if resp.status_code != 200:
            out.body = await resp.aread()
            return out
        buffer = ""
        async for chunk in resp.aiter_text():
            buffer += chunk
            complete, sep, buffer = buffer.rpartition("\n\n")
            if sep:
                before = len(out.events)
                parse_sse(complete + "\n\n", out)
                if on_event is not None and len(out.events) > before:
                    on_event(out)
                if stop_after is not None and len(out.events) >= stop_after:
                    del out.events[stop_after:]
                    return out
        return out


async def stream_lines(http: httpx.AsyncClient, url: str, **kwargs: Any) -> AsyncIterator[str]:
    async with http.stream("GET", url, **kwargs) as resp:
        async for line in resp.aiter_lines():
            yield line
