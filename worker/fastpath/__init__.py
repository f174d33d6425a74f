"""Every use the hot path makes of another library's private internals, one module per library.

Each module's ``probe()`` checks, without I/O, that the internals it needs are there and behave as
expected (names, shapes, a self-test on a few bytes), remembers the answer, and returns it as a
:class:`Probe`; the hot path then takes the fast path only if the probe found it, and the public
API otherwise. Nothing here is imported from a private module at import time, so an upgrade that
moves an internal costs speed, never ``import worker``. :mod:`.startup` runs every probe when a
worker starts, logs which path each component takes and sets ``tokenwire_fast_path``.

- :mod:`.httpx_aiohttp` (``aiohttp``): aiohttp's reader behind an httpx-aiohttp response.
- :mod:`.redis_py` (``redis_reply``): replies taken from redis-py's hiredis reader in bulk.
- :mod:`.redis_cancel` (no component: a correctness guard with no slower path): redis-py connections
  that keep a cancel Python 3.11's ``wait_for`` loses; on a cluster client it sets the nodes' class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import msgspec

__all__ = ["Probe", "Remembered"]

T = TypeVar("T")


class Probe(msgspec.Struct, frozen=True):
    """Which path a component takes: ``available`` is the fast path; ``reason`` says why."""

    component: str
    available: bool
    reason: str

    @property
    def path(self) -> str:
        return "fast" if self.available else "fallback"


class Remembered(Generic[T]):
    """A component's probe and its answer: what ``resolve`` found (``None``: the fallback) and why."""

    __slots__ = ("_component", "_found", "_probed", "_resolve")

    def __init__(self, component: str, resolve: Callable[[], tuple[T | None, str]]) -> None:
        self._component = component
        self._resolve = resolve
        self._found: T | None = None
        self._probed: Probe | None = None

    def probe(self) -> Probe:
        """Look again, remember the answer, return it."""
        self._found, reason = self._resolve()
        self._probed = Probe(self._component, self._found is not None, reason)
        return self._probed

    def found(self) -> T | None:
        """What the last :meth:`probe` (run now if none ran) found, else ``None``."""
        if self._probed is None:
            self.probe()
        return self._found
