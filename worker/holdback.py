"""Known secrets redacted from generated text as it streams: tokens are held while they may begin one.

An upstream may echo a secret (its API key, the Redis password, any configured secret) as generated
text, cut into tokens anywhere. A :class:`Holdback`, one per attempt, sees every token record before
it becomes a token event and keeps, per output channel (``content``, ``reasoning``), the text seen so
far. A token is *held* while the channel's text from some position on is a proper prefix of a
secret's form (:attr:`worker.redact.Redactor.forms`); it is *released* as soon as that can no longer
become a secret, or when the secret completes, and always in the order the upstream sent the tokens.

What is redacted is what :meth:`worker.redact.Redactor.redact` does for known secrets, on the
channel's whole text: every occurrence of every form, overlapping or touching occurrences merged into
one run, each run replaced by one :data:`~worker.redact.REDACTED`; and at the end of the text (the
stream ended, whichever way) a secret's prefix of at least four characters cut off by the end. The
credential *shapes* (``Bearer …``, ``sk-…``) are not: generated text may well talk about them.

How the covering tokens become consistent: every character keeps its token; a redacted run's
characters are dropped except that the token holding its first character carries the marker in its
place. So the first covering token's text is its free prefix + ``[redacted]``, the inner ones are
empty (``""``), the last one keeps its free suffix, and the concatenation of the released texts is
the redacted text. A changed record gets ``bytes=None`` (its text is the truth), an explicit
``special=False`` when the provider said nothing (an emptied token stays a scored token: its
logprob counts as before, with zero-width offsets), and its chosen top-k candidate renamed with it.
Records are never dropped, merged or reordered: token count and logprobs are preserved.

Special (control) tokens: the upstream chooses both the ``special`` flag and where the text is cut,
so a secret may be spelled by special tokens, or by ordinary ones followed by special ones. A reader
may show the channel's text with its special tokens or without them (the confidence tracker skips
them), so both are redacted: each channel has a *plain* view (its ordinary tokens, as above) and,
from its first special token on, a *full* view (every token; it starts as a copy of the plain view,
whose positions it shares until then). A special token feeds the full view only, an ordinary one
both; a record is released when neither view holds it, and a character is dropped when a run of
either view covers it (the marker where a run begins in its token). A channel without special
tokens has no full view and costs what it did.

Cost: with no secret configured there is no Holdback at all (:func:`holdback_for` is ``None``).
With secrets, a token that cannot begin or continue one (it holds none of the forms' first two
characters and does not end with a form's first character) while nothing is held passes after a few
C-speed ``in`` tests; otherwise ``str.find``/``startswith`` over the held tail (shorter than the
longest form) and the token. A streaming Aho-Corasick (pyahocorasick's ``iter`` with ``set``) finds
complete matches across chunks but does not expose the automaton's depth at a chunk's end, which is
what says how much to hold; with a handful of forms ``str.find`` is as fast, so nothing is added.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import msgspec

from .redact import _MIN_CUT, REDACTED, Redactor
from .upstream.base import Candidate, TokenRecord, UpstreamError

__all__ = ["Holdback", "holdback_for"]


class _Channel:
    """The text state of one output channel (positions are code points from the channel's start)."""

    __slots__ = ("hold", "n", "released", "spans", "tail")

    def __init__(self) -> None:
        self.n = 0  # characters seen
        self.hold = 0  # the earliest start of a possible secret not yet complete (n when none)
        self.tail = ""  # the text from hold to n (shorter than the longest form)
        self.released = 0  # characters released in tokens
        self.spans: list[list[int]] = []  # redacted runs [start, end) not yet wholly released

    def copy(self) -> _Channel:
        twin = _Channel()
        twin.n, twin.hold, twin.tail, twin.released = self.n, self.hold, self.tail, self.released
        twin.spans = [list(s) for s in self.spans]
        return twin


class _Lane:
    """One output channel's views: ``plain`` (ordinary tokens) and ``full`` (every token, from the
    channel's first special token on; ``None`` until then, when it would equal ``plain``)."""

    __slots__ = ("full", "plain")

    def __init__(self) -> None:
        self.plain = _Channel()
        self.full: _Channel | None = None

    def views(self) -> tuple[_Channel, ...]:
        return (self.plain,) if self.full is None else (self.plain, self.full)


# a queued record: its lane, its [start, end) in the plain view, then in the full view
_Entry = tuple[TokenRecord, _Lane, int, int, int, int]


class Holdback:
    """Holds one attempt's token records while their text may begin a known secret (module doc)."""

    __slots__ = ("_channels", "_clean", "_forms", "_limit", "_queue", "_shortest", "_specs", "_starts")

    def __init__(self, forms: Iterable[str], limit: int) -> None:
        self._forms = tuple(sorted({f for f in forms if f}, key=len, reverse=True))
        if not self._forms:
            raise ValueError("a Holdback needs at least one secret form")
        self._starts = tuple({(f[:2], f[0]) for f in self._forms})
        self._shortest = len(self._forms[-1])
        self._specs = tuple((f, len(f), f[0]) for f in self._forms)
        self._limit = limit
        self._channels: dict[str, _Lane] = {}
        self._queue: deque[_Entry] = deque()
        # nothing held and no redacted run left open: a token that cannot begin a secret passes
        # without touching any state (positions only matter inside a held window)
        self._clean = True

    @property
    def held(self) -> int:
        """Records held back now."""
        return len(self._queue)

    def push(self, records: list[TokenRecord]) -> list[TokenRecord]:
        """The records that can be published now, in order, redacted (``records`` itself when all
        pass untouched); the others are held.

        Raises :class:`UpstreamError` (``upstream_too_many_tokens``) when more than ``limit``
        records would be held (only tokens without text can pile up behind a possible secret)."""
        i = 0
        if self._clean:  # the common case: nothing held, and these tokens cannot begin a secret
            starts = self._starts
            for record in records:
                text = record.text
                if record.top and self._top_has(record.top):
                    break
                for two, one in starts:  # _may_start, inlined: this runs for every token
                    if two in text or text.endswith(one):
                        break
                else:
                    i += 1
                    continue
                break
            if i == len(records):
                return records
        out = records[:i]
        for record in records[i:]:
            self._enqueue(record)
        if len(self._queue) > self._limit:
            raise UpstreamError(
                "upstream_too_many_tokens",
                f"upstream sent more than {self._limit} tokens while their text could begin a secret",
            )
        self._release(out)
        return out

    def flush(self) -> list[TokenRecord]:
        """Every held record, redacted: the stream ended (a secret's prefix of four characters or
        more left at a channel's end is redacted too)."""
        for lane in self._channels.values():
            for ch in lane.views():
                if len(ch.tail) >= _MIN_CUT:
                    _add_span(ch.spans, ch.hold, ch.n)
                ch.hold, ch.tail = ch.n, ""
        out: list[TokenRecord] = []
        self._release(out)
        return out

    def redact(self, text: str) -> str:
        """``text`` as a whole redacted exactly as a channel's stream of it would be."""
        if not text or not self._may_start(text):
            return text
        ch = _Channel()
        self._feed(ch, text)
        if len(ch.tail) >= _MIN_CUT:
            _add_span(ch.spans, ch.hold, ch.n)
        return _render(text, 0, ch.spans)

    # -- internals

    def _may_start(self, text: str) -> bool:
        """Whether ``text`` holds the first two characters of a form or ends with its first."""
        for two, one in self._starts:  # noqa: SIM110 (a loop: any() over a generator costs more)
            if two in text or text.endswith(one):
                return True
        return False

    def _lane(self, name: str) -> _Lane:
        lane = self._channels.get(name)
        if lane is None:
            lane = self._channels[name] = _Lane()
        return lane

    def _contains(self, text: str) -> bool:
        return any(form in text for form in self._forms)

    def _top_has(self, top: list[Candidate] | None) -> bool:
        """Whether a top-k candidate's text holds a whole secret form."""
        if not top:
            return False
        shortest = self._shortest
        return any(len(c.token) >= shortest and self._contains(c.token) for c in top)

    def _enqueue(self, record: TokenRecord) -> None:
        lane = self._lane(record.channel)
        plain, full, text = lane.plain, lane.full, record.text
        ps = plain.n
        if record.special is True:
            if full is None:  # the channel's first special token: the full view parts from plain
                full = lane.full = plain.copy()
        elif text:
            self._feed(plain, text)
        pe = plain.n
        if full is None:
            self._queue.append((record, lane, ps, pe, ps, pe))
            return
        fs = full.n
        if text:
            self._feed(full, text)
        self._queue.append((record, lane, ps, pe, fs, full.n))

    def _feed(self, ch: _Channel, piece: str) -> None:
        """Append ``piece`` to the channel: record the secrets it completes, move the hold point."""
        before = ch.n
        ch.n = end = before + len(piece)
        tail = ch.tail
        if not tail and not self._may_start(piece):
            ch.hold = end
            return
        base = ch.hold
        text = tail + piece if tail else piece
        size = len(text)
        fresh = before - base  # occurrences ending at or before it were found earlier
        hold = size
        for form, n, first in self._specs:
            if size >= n:
                lo = fresh - n + 1
                at = text.find(form, lo if lo > 0 else 0)
                while at != -1:
                    _add_span(ch.spans, base + at, base + at + n)
                    at = text.find(form, at + 1)
            # the earliest start whose rest is a proper prefix of a form
            lo = size - n + 1
            at = text.find(first, lo if lo > 0 else 0, hold)
            while at != -1:
                if form.startswith(text[at:]):
                    hold = at
                    break
                at = text.find(first, at + 1, hold)
        ch.hold = base + hold
        ch.tail = text[hold:] if hold < size else ""

    def _release(self, out: list[TokenRecord]) -> None:
        """Move every decided record at the queue's front to ``out``, redacted."""
        queue = self._queue
        while queue:
            record, lane, ps, pe, fs, fe = queue[0]
            full = lane.full
            if pe > lane.plain.hold or (full is not None and fe > full.hold):
                break
            out.append(self._rendered(record, lane, ps, pe, fs, fe))
            queue.popleft()
        if queue:
            self._clean = False
            return
        for lane in self._channels.values():
            if lane.plain.spans or (lane.full is not None and lane.full.spans):
                self._clean = False
                return
        self._clean = True

    def _rendered(self, record: TokenRecord, lane: _Lane, ps: int, pe: int, fs: int, fe: int) -> TokenRecord:
        ch, full = lane.plain, lane.full
        spans = ch.spans
        text = record.text
        if full is None:
            if spans:
                text = _render(text, ps, spans)
                ch.spans = [s for s in spans if s[1] >= pe]
            ch.released = pe
        elif spans or full.spans:  # the runs of both views, in the record's own positions
            local: list[tuple[int, int]] = []
            for view, start, end in ((ch, ps, pe), (full, fs, fe)):
                if end > start:  # (a special token has no characters in the plain view)
                    local += [(a - start, b - start) for a, b in view.spans if a < end and b > start]
                view.spans = [s for s in view.spans if s[1] >= end]
                view.released = end
            if local:
                text = _render_views(text, local)
        top = self._top(record.top, record.text, text)
        if text == record.text and top is record.top:
            return record
        if text == record.text:
            return msgspec.structs.replace(record, top=top)
        special = False if record.special is None else record.special
        return msgspec.structs.replace(record, text=text, bytes=None, special=special, top=top)

    def _top(self, top: list[Candidate] | None, old: str, new: str) -> list[Candidate] | None:
        """The candidates with the chosen one (``old``) renamed ``new`` and secrets redacted."""
        if top is None or (old == new and not self._top_has(top)):
            return top
        out = []
        for cand in top:
            if cand.token == old and old != new:
                cand = msgspec.structs.replace(cand, token=new, bytes=None)
            elif self._contains(cand.token):
                cand = msgspec.structs.replace(cand, token=self.redact(cand.token), bytes=None)
            out.append(cand)
        return out


def _add_span(spans: list[list[int]], start: int, end: int) -> None:
    """Add [start, end) to the sorted runs, merging overlapping or touching ones."""
    if start >= end:
        return
    i = len(spans)
    while i and spans[i - 1][0] > start:
        i -= 1
    spans.insert(i, [start, end])
    if i and spans[i - 1][1] >= start:  # merge with the run before
        i -= 1
        spans[i][1] = max(spans[i][1], end)
        del spans[i + 1]
    while i + 1 < len(spans) and spans[i + 1][0] <= spans[i][1]:
        spans[i][1] = max(spans[i][1], spans[i + 1][1])
        del spans[i + 1]


def _render(text: str, start: int, spans: list[list[int]]) -> str:
    """``text`` (the channel's characters from ``start``) with the runs' characters dropped and a
    marker where a run begins."""
    end = start + len(text)
    out: list[str] = []
    pos = start
    for a, b in spans:
        if a >= end:
            break
        if b <= start:
            continue
        if a > pos:
            out.append(text[pos - start : a - start])
        if a >= start:
            out.append(REDACTED)
        pos = max(pos, min(b, end))
    if pos == start and not out:
        return text  # no run covers a character of it
    out.append(text[pos - start :])
    return "".join(out)


def _render_views(text: str, runs: list[tuple[int, int]]) -> str:
    """``text`` with every character a run covers dropped (runs of both views, in the text's own
    positions; a run may begin before it) and one marker per stretch of dropped characters in
    which a run begins: what a reader of either view sees is that view's redaction (a stretch the
    other view extends keeps its marker), the characters either view redacts never shown."""
    size = len(text)
    dropped = [False] * size
    begins = [False] * size
    for a, b in runs:
        for i in range(max(a, 0), min(b, size)):
            dropped[i] = True
        if 0 <= a < size:
            begins[a] = True
    out: list[str] = []
    i = 0
    while i < size:
        if not dropped[i]:
            out.append(text[i])
            i += 1
            continue
        j = i
        while j < size and dropped[j]:
            j += 1
        if any(begins[i:j]):
            out.append(REDACTED)
        i = j
    return "".join(out)


def holdback_for(redactor: Redactor, limit: int) -> Holdback | None:
    """The Holdback of one attempt for ``redactor``'s secrets; None when it knows none."""
    forms = redactor.forms
    return Holdback(forms, limit) if forms else None
