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

import codecs
import math
from typing import Final

from .confidence import sanitize_logprob
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

    :meth:`add` takes each answer token after scoring and returns the segments it closed (most
    tokens: none); :meth:`close` closes the last one. :attr:`low` keeps the low segments (for the
    review entry), :attr:`means` every segment's mean logprob, :attr:`logprobs` the logprob of
    each answer token that is not a control token, as its token event has it (for the signals
    feedback records)."""

    __slots__ = (
        "_bands",
        "_buf",
        "_bytes",
        "_cut_here",
        "_decoder",
        "_first_word",
        "_has_content",
        "_inside",
        "_line_has_word",
        "_lp_sum",
        "_min_lp",
        "_n_scored",
        "_n_scored_all",
        "_seg_bytes",
        "_seg_chars",
        "_seg_tokens",
        "_state",
        "_stop",
        "_unit",
        "_word",
        "_word_open",
        "count",
        "logprobs",
        "low",
        "means",
        "review",
    )

    def __init__(self, review: Review) -> None:
        self.review = review
        self._unit = review.unit
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._buf = bytearray()  # the open segment's bytes
        self._bytes = 0  # the answer's bytes so far
        self._seg_tokens: tuple[int, int] | None = None  # its first token, last token + 1
        self._seg_chars = (0, 0)
        self._seg_bytes = (0, 0)
        self._lp_sum = 0.0
        self._min_lp: float | None = None
        self._n_scored = 0
        self._n_scored_all = 0
        self._state = _IN
        self._stop = ""  # what opened _END: ".", "weak" (an abbreviation's dot), "!", "?", "cjk"
        self._has_content = False  # the open segment has a character that is not whitespace
        self._cut_here = False  # the pending cut lies inside the token being read
        self._inside = False  # a cut inside the token being read was confirmed inside it
        self._word = ""  # the last word, lowercase, at most _MAX_WORD characters
        self._word_open = False  # the last character read belongs to that word
        self._first_word = False  # that word is the first one of its line
        self._line_has_word = False
        self._bands = {"high": 0, "medium": 0, "low": 0, "unscored": 0}
        self.count = 0
        self.low: list[SegmentSpan] = []
        self.means: list[float | None] = []
        self.logprobs: list[float | None] = []

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
        the text nor scored); the segments it closed. Its bytes and score are those the confidence
        tracker used: ``raw_bytes``, else the UTF-8 of ``text``; the sanitised ``logprob``."""
        if excluded:
            data, lp = b"", None
        else:
            data = raw_bytes or (text.encode("utf-8", "replace") if text else b"")
            lp, _ = sanitize_logprob(logprob)
            # as the token event carries it (finite, else null): what feedback reads back
            self.logprobs.append(logprob if logprob is not None and math.isfinite(logprob) else None)
        start = self._bytes
        self._bytes = start + len(data)
        return self.add(index, data, chars, (start, self._bytes), lp)

    def add(
        self,
        index: int,
        data: bytes,
        chars: tuple[int, int],
        byte_range: tuple[int, int],
        logprob: float | None,
    ) -> tuple[SegmentSpan, ...]:
        """Token event ``index`` of the answer: its bytes in the text (``data``; empty for an
        excluded special token), its code-point and byte ranges, its sanitised logprob (None when
        it is not scored). Returns the segments it closed (0 to 2)."""
        text = self._decoder.decode(data) if data else ""
        closed: tuple[SegmentSpan, ...] = ()
        if text:
            self._cut_here = self._inside = False
            if self._scan(text) and self._seg_tokens is not None:
                closed = (self._close(),)  # a cut before this token: it starts the next segment
        self._take(index, data, chars, byte_range, logprob)
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
        if self._seg_tokens is None:
            return ()
        return (self._close(),)

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
            if not self._word_open:
                self._word_open = True
                self._word = ""
                self._first_word = not self._line_has_word
                self._line_has_word = True
            if len(self._word) < _MAX_WORD:
                self._word += c.lower()
            self._has_content = True
            return
        self._word_open = False
        if c in _NEWLINES:
            self._line_has_word = False
            self._state = _NL1 if self._unit == "paragraph" else _NL
            self._cut()
            return
        if c.isspace():
            return
        self._has_content = True
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
            weak = word in ABBREVIATIONS or (len(word) == 1 and word.isalpha())
            self._state, self._stop = _END, "weak" if weak else "."
            self._cut()

    def _words(self, text: str) -> None:
        """The fast path of :meth:`_scan` inside a segment: ``text`` has no stop and no newline,
        so only the last word (and whether it is its line's first) moves."""
        if not self._has_content and not text.isspace():
            self._has_content = True
        end = len(text)
        i = end
        while i > 0 and text[i - 1].isalnum():
            i -= 1
        earlier = any(c.isalnum() for c in text[:i])  # a word before the trailing one
        if i == end:
            self._word_open = False
            if earlier:
                self._line_has_word = True
            return
        if i == 0 and self._word_open:  # the token continues the word: "Ein" + "stein"
            self._word = (self._word + text.lower())[:_MAX_WORD]
            return
        self._first_word = not (self._line_has_word or earlier)
        self._line_has_word = True
        self._word = text[i:].lower()[:_MAX_WORD]
        self._word_open = True

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

    # -- accumulating ------------------------------------------------------------------------------

    def _take(
        self, index: int, data: bytes, chars: tuple[int, int], byte_range: tuple[int, int], lp: float | None
    ) -> None:
        if self._seg_tokens is None:
            self._seg_tokens = (index, index + 1)
            self._seg_chars = chars
            self._seg_bytes = byte_range
        else:
            self._seg_tokens = (self._seg_tokens[0], index + 1)
            self._seg_chars = (self._seg_chars[0], chars[1])
            self._seg_bytes = (self._seg_bytes[0], byte_range[1])
        self._buf += data
        if lp is not None:
            self._n_scored += 1
            self._n_scored_all += 1
            self._lp_sum += lp
            if self._min_lp is None or lp < self._min_lp:
                self._min_lp = lp

    def _close(self) -> SegmentSpan:
        tokens = self._seg_tokens
        assert tokens is not None
        n = self._n_scored
        mean = self._lp_sum / n if n else None
        band = band_of(mean, self.review)
        span = SegmentSpan(
            self.count,
            self._buf.decode("utf-8", "replace"),
            self._seg_chars,
            self._seg_bytes,
            tokens,
            mean,
            None if self._min_lp is None else math.exp(self._min_lp),
            n,
            band,
        )
        self.count += 1
        self._bands[band] += 1
        self.means.append(mean)
        if band == "low":
            self.low.append(span)
        self._buf = bytearray()
        self._seg_tokens = None
        self._lp_sum = 0.0
        self._min_lp = None
        self._n_scored = 0
        return span

    # -- the verdict ---------------------------------------------------------------------------------

    def verdict(self, confidence: float | None) -> Verdict:
        """The answer's verdict (after :meth:`close`)."""
        return verdict_of(
            self._bands, [s.index for s in self.low], confidence, self._n_scored_all, self.review
        )
