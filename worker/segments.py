"""Segments of a streamed answer and their bands, computed token by token; the job's verdict.

A job with ``review`` (:class:`worker.jobs.Review`) has its answer cut into segments (``unit``:
``sentence``, ``line`` or ``paragraph``). One :class:`Segmenter` per answer (per candidate, when a
job has several: each candidate's tokens go to its own segmenter and its own verdict) takes every
answer token once, after the confidence tracker scored it, and hands back the segments whose end
that token showed. Its cost is O(characters of the token) and one UTF-8 decode per token.

**Segments are runs of whole tokens** and tile the answer: every token belongs to exactly one
segment, and the segments' texts concatenated are the answer. The boundary rules place a *cut*
between two characters; the token holding the first character after the cut starts the next
segment, and a token holding characters on both sides stays with the earlier one. Whitespace after
a sentence's end starts the next segment (tokens carry their leading space: ``" The"``), except
newlines, which end the segment they follow (``"Title\\n\\n"``). A segment with no character but
whitespace is never closed on its own: it joins the next one (the answer's leading ``"\\n\\n"``).

**Sentence rule** (documented, not a library: no sentence segmenter we know of works on a stream
without re-reading the open sentence at every token, and the well-kept ones, e.g. pysbd, cost far
more per call than a token's budget):

* ``!`` and ``?`` end a sentence; so does ``.`` except after a known abbreviation (``Dr.``,
  ``Mr.``, ``Prof.``, ``vs.``, … :data:`ABBREVIATIONS`), after a single letter (initials and dotted
  abbreviations: ``J. Smith``, ``U.S.``, ``e.g.``), or after a number that is the first word of its
  line (a list marker: ``1. First``);
* the end is confirmed by what follows: closing quotes and brackets (``"”’»)]」』）``…) and
  further stops (``?!``, ``...``) stay in the sentence; then it needs whitespace, and after a
  ``.`` the next word must not start with a lowercase letter (``approx. three``, ``e.g. the``).
  So a decimal (``3.14``), a version (``v1.2``) or a domain (``example.com``) never ends one;
* the CJK full stops ``。！？｡`` end a sentence whatever follows (no space is needed);
* a newline always ends a sentence (list items, headings).

Known limits, on purpose: a dotted abbreviation that really ends a sentence (``… in the U.S. The
next``) does not cut; ``etc.`` is not an abbreviation here (it ends sentences more often than not).

**Line**: a newline ends a line (blank lines join the line before). **Paragraph**: a blank line
(two newlines, with only spaces or tabs between them) ends a paragraph.

A segment is cut after :data:`MAX_SEGMENT_BYTES` bytes at the token that crosses them, whatever the
rules say, so that no ``segment`` event grows with the answer.
"""

from __future__ import annotations

import math
from typing import Final

from .confidence import FLOOR, sanitize_logprob
from .events import Band, Segment, Verdict
from .jobs import Review

__all__ = [
    "ABBREVIATIONS",
    "MAX_SEGMENT_BYTES",
    "SegmentSpan",
    "Segmenter",
    "band_of",
    "verdict_of",
]

MAX_SEGMENT_BYTES: Final = 8192
"""A segment is cut at the token that takes it past this many bytes (a bound on every event)."""

ABBREVIATIONS: Final = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "mt",
        "vs",
        "no",
        "nos",
        "fig",
        "figs",
        "eq",
        "eqs",
        "approx",
        "dept",
        "est",
        "inc",
        "ltd",
        "co",
        "corp",
        "gen",
        "gov",
        "lt",
        "col",
        "sgt",
        "capt",
        "rev",
        "hon",
        "ca",
        "cf",
        "al",
        "vol",
        "pp",
        "ed",
        "eds",
        "op",
        "viz",
        "resp",
        "ch",
        "sec",
        "art",
    ]
)
"""Words (lowercase, without their dot) whose ``.`` never ends a sentence."""

_CJK_STOPS: Final = frozenset("。！？｡")
_LATIN_STRONG: Final = frozenset("!?")
_CLOSERS: Final = frozenset("\"')]}»›”’」』）】〉》")
_NEWLINES: Final = frozenset("\n\u2028\u2029\x85")
# characters that can change the state of a segment in progress (fast path: a token with none of
# them, in the middle of a segment, only moves the last word along)
_TRIGGERS: Final = frozenset(".!?") | _CJK_STOPS | _NEWLINES

# states
_IN: Final = 0  # inside a segment
_END: Final = 1  # after a sentence's stop (and closers): whitespace must follow
_SPACE: Final = 2  # after the stop and whitespace: the next character decides
_NL: Final = 3  # after a newline that ends the segment: the next non-space character cuts
_NL1: Final = 4  # paragraph unit: one newline seen

_MAX_WORD: Final = 16


class SegmentSpan:
    """One closed segment, before it becomes a :class:`~worker.events.Segment` event."""

    __slots__ = (
        "band",
        "byte_end",
        "byte_start",
        "char_end",
        "char_start",
        "index",
        "mean_logprob",
        "min_prob",
        "n_scored",
        "text",
        "token_end",
        "token_start",
    )

    def __init__(
        self,
        index: int,
        text: str,
        chars: tuple[int, int],
        byte_range: tuple[int, int],
        tokens: tuple[int, int],
        mean_logprob: float | None,
        min_prob: float | None,
        n_scored: int,
        band: Band,
    ) -> None:
        self.index = index
        self.text = text
        self.char_start, self.char_end = chars
        self.byte_start, self.byte_end = byte_range
        self.token_start, self.token_end = tokens
        self.mean_logprob = mean_logprob
        self.min_prob = min_prob
        self.n_scored = n_scored
        self.band = band

    def event(self, job_id: str, attempt: int) -> Segment:
        return Segment(
            job_id=job_id,
            attempt=attempt,
            index=self.index,
            text=self.text,
            char_start=self.char_start,
            char_end=self.char_end,
            byte_start=self.byte_start,
            byte_end=self.byte_end,
            token_start=self.token_start,
            token_end=self.token_end,
            mean_logprob=self.mean_logprob,
            min_prob=self.min_prob,
            n_scored=self.n_scored,
            band=self.band,
        )


def band_of(mean_logprob: float | None, review: Review) -> Band:
    """``high`` above ``publish_above``, ``low`` below ``review_below``, else ``medium``;
    ``unscored`` for no mean."""
    if mean_logprob is None:
        return "unscored"
    if mean_logprob > review.publish_above:
        return "high"
    if mean_logprob < review.review_below:
        return "low"
    return "medium"


def verdict_of(
    bands: dict[str, int], low: list[int], confidence: float | None, n_scored: int, review: Review
) -> Verdict:
    """The verdict of an answer whose segments fell in ``bands`` (counts by band; ``low``: the
    indexes of its low segments), with the answer's ``confidence`` and scored-token count."""
    reasons: list[str] = []
    if low:
        shown = ", ".join(str(i) for i in low[:10]) + (", …" if len(low) > 10 else "")
        noun = "segment" if len(low) == 1 else "segments"
        reasons.append(
            f"{len(low)} low {noun} (mean logprob under review_below {review.review_below}): {shown}"
        )
    if n_scored == 0:
        reasons.append("no answer token has a logprob: nothing supports publishing it")
    elif review.min_confidence is not None and confidence is not None and confidence < review.min_confidence:
        reasons.append(f"confidence {confidence:.4f} under min_confidence {review.min_confidence}")
    return Verdict(
        decision="review" if reasons else "publish",
        reasons=reasons,
        n_low=bands["low"],
        n_medium=bands["medium"],
        n_high=bands["high"],
        n_unscored=bands["unscored"],
    )


class Segmenter:
    """Cuts one answer into segments as its tokens arrive (see the module doc).

    :meth:`token` takes each answer token after scoring and returns the segments it closed (most
    tokens: none); :meth:`close` closes the last one. :attr:`low` keeps the low segments (for the
    review entry), :attr:`means` every segment's mean logprob (for the signals feedback records)."""

    __slots__ = (
        "_bands",
        "_buf",
        "_bytes",
        "_char_end",
        "_char_start",
        "_cut_here",
        "_first_word",
        "_has_content",
        "_inside",
        "_line_blank",
        "_lp_sum",
        "_min_lp",
        "_n_scored",
        "_n_scored_all",
        "_partial",
        "_seg_byte_start",
        "_state",
        "_stop",
        "_tok_end",
        "_tok_start",
        "_unit",
        "_word",
        "_word_open",
        "count",
        "low",
        "means",
        "review",
    )

    def __init__(self, review: Review) -> None:
        self.review = review
        self._unit = review.unit
        self._partial = b""  # the bytes of a character a later token completes
        self._buf = bytearray()  # the open segment's bytes
        self._bytes = 0  # the answer's bytes so far
        self._tok_start = -1  # the open segment's first token (-1: it has none yet) ...
        self._tok_end = 0  # ... and its last token + 1
        self._char_start = self._char_end = self._seg_byte_start = 0
        self._lp_sum = 0.0
        self._min_lp = 0.0
        self._n_scored = 0
        self._n_scored_all = 0
        self._state = _IN
        self._stop = ""  # what opened _END: ".", "weak" (an abbreviation's dot), "!", "?", "cjk"
        self._has_content = False  # the open segment has a character that is not whitespace
        self._cut_here = False  # the pending cut lies inside the token being read
        self._inside = False  # a cut inside the token being read was confirmed inside it
        self._word = ""  # the last word as written (only its first _MAX_WORD + 1 characters)
        self._word_open = False  # the last character read belongs to that word
        self._first_word = False  # that word is the first thing on its line
        self._line_blank = True  # nothing but whitespace since the last newline
        self._bands = {"high": 0, "medium": 0, "low": 0, "unscored": 0}
        self.count = 0
        self.low: list[SegmentSpan] = []
        self.means: list[float | None] = []

    # -- per token ---------------------------------------------------------------------------------

    def token(
        self,
        index: int,
        text: str,
        raw_bytes: bytes | None,
        excluded: bool,
        logprob: float | None,
        chars: tuple[int, int],
    ) -> tuple[SegmentSpan, ...]:
        """An answer token as its token event has it (``excluded``: a control token, not part of
        the text nor scored); the segments it closed (0 to 2). Its bytes and score are those the
        confidence tracker used: ``raw_bytes``, else the UTF-8 of ``text``; the sanitised
        ``logprob``."""
        if excluded:
            data: bytes = b""
            lp = None
        else:
            if raw_bytes:
                data = raw_bytes
                chunk = self._decode(raw_bytes)
            else:
                data = text.encode("utf-8", "replace") if text else b""
                chunk = text if not self._partial else self._decode(data)
            if type(logprob) is float and FLOOR <= logprob <= 0.0:
                lp = logprob + 0.0  # the common case, as sanitize_logprob has it
            else:
                lp, _ = sanitize_logprob(logprob)
        closed: tuple[SegmentSpan, ...] = ()
        if data and chunk:
            self._cut_here = self._inside = False
            if self._scan(chunk) and self._tok_start >= 0:
                closed = (self._close(),)  # a cut before this token: it starts the next segment
        # the token joins the open segment
        start = self._bytes
        self._bytes = start + len(data)
        if self._tok_start < 0:
            self._tok_start = index
            self._char_start = chars[0]
            self._seg_byte_start = start
        self._tok_end = index + 1
        self._char_end = chars[1]
        if data:
            self._buf += data
        if lp is not None:
            self._n_scored_all += 1
            if self._n_scored == 0 or lp < self._min_lp:
                self._min_lp = lp
            self._n_scored += 1
            self._lp_sum += lp
        if self._inside:  # the cut is inside this token: it ends the segment
            self._inside = False
            closed += (self._close(),)
            self._has_content = False
        elif len(self._buf) >= MAX_SEGMENT_BYTES and self._has_content:
            closed += (self._close(),)
            self._has_content = False
            self._state = _IN
        return closed

    def close(self) -> tuple[SegmentSpan, ...]:
        """The last segment (none when the answer had no token)."""
        if self._tok_start < 0:
            return ()
        return (self._close(),)

    def _decode(self, data: bytes) -> str:
        """The characters ``data`` completes (with the bytes held from before); an incomplete
        character at its end is held for the next token. Invalid bytes become U+FFFD."""
        if not self._partial and data.isascii():
            return data.decode("ascii")
        buf = self._partial + data
        cut = len(buf)
        for back in range(1, min(4, len(buf)) + 1):  # the last lead byte, if its character is cut
            b = buf[-back]
            if b & 0xC0 == 0x80:
                continue
            need = 2 if b & 0xE0 == 0xC0 else 3 if b & 0xF0 == 0xE0 else 4 if b & 0xF8 == 0xF0 else 1
            if need > back:
                cut = len(buf) - back
            break
        self._partial = buf[cut:]
        return buf[:cut].decode("utf-8", "replace")

    # -- boundaries ----------------------------------------------------------------------------------

    def _scan(self, text: str) -> bool:
        """Run the boundary rules over one token's characters. True when a cut made before this
        token was confirmed by it; sets :attr:`_inside` when a cut inside it was confirmed."""
        if self._state == _IN and _TRIGGERS.isdisjoint(text):
            self._words(text)
            return False
        before = False
        for c in text:
            state = self._state
            if state == _IN:
                self._in(c)
            elif c in _NEWLINES:
                self._state = _NL
                self._cut()
            elif state == _END:
                before |= self._after_stop(c)
            elif c.isspace():
                continue
            elif state == _SPACE and (self._stop == "weak" or (self._stop == "." and c.islower())):
                self._state = _IN  # an abbreviation, or the next word is lowercase
                self._in(c)
            elif state == _NL1:
                self._state = _IN  # a single newline inside a paragraph
                self._in(c)
            else:  # _SPACE or _NL, and a character that starts the next segment
                before |= self._confirm()
                self._in(c)
        return before

    def _after_stop(self, c: str) -> bool:
        """A character right after a sentence's stop (and closers); as :meth:`_confirm`."""
        if c in _CLOSERS or c == ".":
            self._cut()
        elif c in _LATIN_STRONG or c in _CJK_STOPS:
            self._stop = "cjk" if c in _CJK_STOPS else c
            self._cut()
        elif c.isspace():
            self._state = _NL if self._stop == "cjk" else _SPACE
        elif self._stop == "cjk":
            before = self._confirm()
            self._in(c)
            return before
        else:  # 3.14, U.S, example.com: no end here
            self._state = _IN
            self._in(c)
        return False

    def _in(self, c: str) -> None:
        """A character inside a segment."""
        if c.isalnum():
            if self._word_open:
                if len(self._word) <= _MAX_WORD:
                    self._word += c
            else:
                self._word_open = True
                self._word = c
                self._first_word = self._line_blank
                self._line_blank = False
            self._has_content = True
            return
        self._word_open = False
        if c in _NEWLINES:
            self._line_blank = True
            self._state = _NL1 if self._unit == "paragraph" else _NL
            self._cut()
            return
        if c.isspace():
            return
        self._has_content = True
        self._line_blank = False
        if self._unit != "sentence":
            return
        if c in _CJK_STOPS:
            self._state, self._stop = _END, "cjk"
            self._cut()
        elif c in _LATIN_STRONG:
            self._state, self._stop = _END, c
            self._cut()
        elif c == ".":
            word = self._word
            if word.isdigit() and self._first_word:
                return  # a list marker: "1. First"
            weak = word.lower() in ABBREVIATIONS or (len(word) == 1 and word.isalpha())
            self._state, self._stop = _END, "weak" if weak else "."
            self._cut()

    def _words(self, text: str) -> None:
        """The fast path of :meth:`_scan` inside a segment, for ``text`` with no stop and no
        newline: the common token (a word, with or without its leading space) only moves the last
        word along; any other goes character by character."""
        word = text.lstrip()
        if not word:  # spaces only
            self._word_open = False
            return
        if not word.isalnum():
            for c in text:
                self._in(c)
            return
        self._has_content = True
        if self._word_open and len(word) == len(text):  # it continues the word: "Ein" + "stein"
            if len(self._word) <= _MAX_WORD:
                self._word += word
            return
        self._word_open = True
        self._word = word
        self._first_word = self._line_blank
        self._line_blank = False

    def _cut(self) -> None:
        """The pending cut moves to after the character just read (inside this token)."""
        self._cut_here = True

    def _confirm(self) -> bool:
        """The character being read confirms the pending cut. True when the cut lies before this
        token (the token starts the next segment); a cut inside it closes the segment after it."""
        self._state = _IN
        if not self._has_content:
            return False  # nothing but whitespace so far: it joins the next segment
        if self._cut_here:
            self._inside = True
            return False
        self._has_content = False
        return True

    # -- closing ------------------------------------------------------------------------------------

    def _close(self) -> SegmentSpan:
        n = self._n_scored
        mean = self._lp_sum / n if n else None
        band = band_of(mean, self.review)
        span = SegmentSpan(
            self.count,
            self._buf.decode("utf-8", "replace"),
            (self._char_start, self._char_end),
            (self._seg_byte_start, self._bytes),
            (self._tok_start, self._tok_end),
            mean,
            math.exp(self._min_lp) if n else None,
            n,
            band,
        )
        self.count += 1
        self._bands[band] += 1
        self.means.append(mean)
        if band == "low":
            self.low.append(span)
        self._buf = bytearray()
        self._tok_start = -1
        self._lp_sum = 0.0
        self._n_scored = 0
        return span

    # -- the verdict ---------------------------------------------------------------------------------

    def verdict(self, confidence: float | None) -> Verdict:
        """The answer's verdict (after :meth:`close`)."""
        return verdict_of(
            self._bands, [s.index for s in self.low], confidence, self._n_scored_all, self.review
        )
