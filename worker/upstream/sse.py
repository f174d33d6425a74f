"""Server-sent events from a stream's decoded text, as the WHATWG event-stream interpretation says.

:class:`SSEReader` holds one stream's state. :meth:`SSEReader.lines` takes the text as it arrives
(any cut, even between the CR and LF of a CRLF) and gives the complete lines; :meth:`SSEReader.events`
reads lines and gives each dispatched event as ``(name, data)``: ``name`` is the ``event`` field,
``"message"`` when none was given; ``data`` the ``data`` fields joined by LF. A blank line
dispatches the event gathered since the last one; a line starting with ``:`` is a comment; a field
without a colon has an empty value; a single space after the colon is not part of the value; ``id``
(kept across events, refused when it holds NUL) and ``retry`` (an integer) make a blank line
dispatch even without data; other fields are ignored. :meth:`SSEReader.flush` gives the last line
of a body that did not end with a line terminator. One byte order mark starting the stream is
ignored, as the standard says (httpx-sse keeps it, losing the first event).

This is what httpx-sse's line and event decoders do (a property test holds
the two to the same output for any text and any cut), in one pass per read instead of a method call
and an event object per line: a stream of ``data: ...`` events, one per token, is the hot path.
"""

from __future__ import annotations

__all__ = ["SSEReader"]


class SSEReader:
    """One stream's line buffer and the event being gathered."""

    __slots__ = ("_cr", "_data", "_event", "_last_id", "_partial", "_retry", "_started")

    def __init__(self) -> None:
        # the text since the last line terminator, as it came: joined once its line ends (a string
        # grown read by read is copied whole each time, quadratic in a long line's reads)
        self._partial: list[str] = []
        self._started = False  # the stream's first character was seen (a byte order mark is dropped)
        self._cr = False  # the text so far ended with CR: a LF starting the next text belongs to it
        self._event = ""
        self._data: list[str] = []
        self._last_id = ""
        self._retry: int | None = None

    def lines(self, text: str) -> list[str]:
        """The lines ``text`` completes (CRLF, CR and LF each end one), without terminators."""
        if not self._started:
            self._started = True
            if text[:1] == "\ufeff":
                text = text[1:]
        if self._cr:
            text = "\r" + text
            self._cr = False
        if text[-1:] == "\r":  # a LF may follow in the next text: decided then
            self._cr = True
            text = text[:-1]
        if not text:
            return []
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        last = lines.pop()  # "" when the text ended with a terminator
        partial = self._partial
        if not lines:
            partial.append(last)
            return lines
        if partial:
            partial.append(lines[0])
            lines[0] = "".join(partial)
        self._partial = [last] if last else []
        return lines

    def flush(self) -> list[str]:
        """The body ended: its last line, if it had no terminator (or ended with a lone CR)."""
        if not self._partial and not self._cr:
            return []
        line = "".join(self._partial)
        self._partial, self._cr = [], False
        return [line]

    def events(self, lines: list[str]) -> list[tuple[str, str]]:
        """The events ``lines`` dispatch, as ``(name, data)``, in order."""
        out: list[tuple[str, str]] = []
        event, data, retry = self._event, self._data, self._retry
        for line in lines:
            if not line:
                if data or event or retry is not None or self._last_id:
                    out.append((event or "message", "\n".join(data)))
                    event, data, retry = "", [], None
                continue
            if line[:6] == "data: ":  # the usual shape first
                data.append(line[6:])
                continue
            name, _, value = line.partition(":")
            if not name:  # a comment
                continue
            if value[:1] == " ":
                value = value[1:]
            if name == "data":
                data.append(value)
            elif name == "event":
                event = value
            elif name == "id":
                if "\0" not in value:
                    self._last_id = value
            elif name == "retry":
                retry = _integer(value, retry)
        self._event, self._data, self._retry = event, data, retry
        return out


def _integer(value: str, current: int | None) -> int | None:
    """``retry``'s value as ``int()`` reads it; an unreadable one leaves the field as it was."""
    try:
        return int(value)
    except ValueError:
        return current
