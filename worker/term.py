"""Whether to colour a stream: only a terminal, and never when ``NO_COLOR`` is set (no-color.org)."""

from __future__ import annotations

import os
from typing import TextIO

__all__ = ["use_color"]


def use_color(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
