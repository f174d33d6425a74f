"""Every use the hot path makes of another library's private internals, one module per library.

Each module's ``probe()`` checks, without I/O, that the internals it needs are there and behave as
expected (names, shapes, a self-test on a few bytes), remembers the answer, and returns it as a
:class:`Probe`; the hot path then takes the fast path only if the probe found it, and the public
API otherwise. Nothing here is imported from a private module at import time, so an upgrade that
moves an internal costs speed, never ``import worker``. :mod:`.startup` runs every probe when a
worker starts, logs which path each component takes and sets ``tokenwire_fast_path``.

- :mod:`.httpx_sse` (component ``sse``): httpx-sse's line and event decoders, run on the body's bytes.
- :mod:`.httpx_aiohttp` (``aiohttp``): aiohttp's reader behind an httpx-aiohttp response.
- :mod:`.redis_py` (``redis_reply``): replies taken from redis-py's hiredis reader in bulk.
"""

from __future__ import annotations

import msgspec

__all__ = ["Probe"]


class Probe(msgspec.Struct, frozen=True):
    """Which path a component takes: ``available`` is the fast path; ``reason`` says why."""

    component: str
    available: bool
    reason: str

    @property
    def path(self) -> str:
        return "fast" if self.available else "fallback"
