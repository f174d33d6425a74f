"""A small terminal screen for reading what ``tokenwire tail`` leaves on a terminal: text, CR, LF,
cursor up (``CSI n A``), erase below (``CSI J``), autowrap off/on (``CSI ? 7 l``/``h``) and colours
(``CSI … m``, ignored). Any other control sequence is an error, so a view that starts emitting
something else is caught rather than misread. Each character takes one cell (the tests' text is
ASCII); the screen keeps every row (its scrollback too)."""

from __future__ import annotations

import re

_CSI = re.compile(r"\x1b\[([?0-9;]*)([A-Za-z])")


class Screen:
    def __init__(self, width: int, height: int, *, onlcr: bool = False) -> None:
        self.width = width
        self.height = height
        self.onlcr = onlcr  # "\n" is CR LF (a StringIO); a pty's driver sends CR LF itself
        self.rows: list[str] = [""]
        self.row = 0
        self.col = 0
        self.autowrap = True
        self.max_up = 0  # the most rows the cursor was ever moved up at once

    def feed(self, text: str) -> None:
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == "\x1b":
                m = _CSI.match(text, i)
                if m is None:
                    raise AssertionError(f"unexpected escape at {text[i : i + 12]!r}")
                self._csi(m.group(1), m.group(2))
                i = m.end()
                continue
            if ch == "\r":
                self.col = 0
            elif ch == "\n":
                self._down()
                if self.onlcr:
                    self.col = 0
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:
                raise AssertionError(f"control character {ch!r} written to the terminal")
            else:
                self._put(ch)
            i += 1

    def _csi(self, params: str, final: str) -> None:
        if final == "m":
            return
        if final in "hl" and params == "?7":
            self.autowrap = final == "h"
            return
        if final == "A":
            n = int(params or "1")
            assert n <= self.height, f"cursor up {n} rows on a screen of {self.height}"
            self.max_up = max(self.max_up, n)
            self.row = max(0, self.row - n)
            return
        if final == "J" and params in ("", "0"):
            self.rows[self.row] = self.rows[self.row][: self.col]
            del self.rows[self.row + 1 :]
            return
        raise AssertionError(f"unexpected control sequence CSI {params}{final}")

    def _down(self) -> None:
        self.row += 1
        while len(self.rows) <= self.row:
            self.rows.append("")

    def _put(self, ch: str) -> None:
        if self.col >= self.width:
            if not self.autowrap:
                return
            self._down()
            self.col = 0
        line = self.rows[self.row].ljust(self.col)
        self.rows[self.row] = line[: self.col] + ch + line[self.col + 1 :]
        self.col += 1

    def text(self) -> str:
        return "\n".join(row.rstrip() for row in self.rows)
