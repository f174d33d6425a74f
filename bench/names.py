"""Looking up a scenario or a variant by the name a user typed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

__all__ = ["find"]


class _Named(Protocol):
    @property
    def name(self) -> str: ...


N = TypeVar("N", bound=_Named)


def find(items: Iterable[N], name: str, kind: str) -> N:
    """The item called ``name``; a ``KeyError`` lists the known names."""
    items = tuple(items)
    for item in items:
        if item.name == name:
            return item
    known = ", ".join(i.name for i in items)
    raise KeyError(f"unknown {kind} {name!r} (known: {known})")
