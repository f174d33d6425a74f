"""Running confidence of a streamed token sequence, O(1) per token (O(k) with top-k).

This implements ``reference/confidence.md`` (§2 sanitisation, §3 metrics, §3.1 top-k, §3.2 spans,
§5 edge cases). Feed one :class:`ConfidenceTracker` per output channel and one :meth:`add` per token
entry (never per chunk); each call returns a :class:`TokenScore` with the running values after that
token, and :meth:`ConfidenceTracker.finish` returns the :class:`~worker.events.Summary`.

Metrics, over the *scored* tokens (not special, sanitised logprob ℓ̂ not null):

* ``cum_logprob`` L = Σℓ̂ (Neumaier-compensated float64); ``mean_logprob`` μ = L/n;
  ``confidence`` = exp(μ), the geometric-mean token probability (= 1/``perplexity``);
* ``min_prob`` = exp(min ℓ̂) at the first index attaining it; ``ewma_confidence`` = exp(E) with
  E₁ = ℓ̂₁, E ← E + α(ℓ̂ − E); ``mean_prob`` = mean of exp(ℓ̂); ``bits_per_byte`` = −L/(ln 2·B)
  with B the UTF-8 bytes of the scored tokens;
* with ``top`` candidates: ``margin``, ``chosen_rank``, ``tail_mass`` and the entropy bounds
  ``entropy_lump`` ≤ ``entropy_lb`` ≤ H ≤ ``entropy_ub`` (§3.1), plus their running aggregates;
* low-confidence spans: maximal runs of consecutive scored tokens with exp(ℓ̂) < τ (§3.2, the
  ``contiguous`` preset), with token, code-point and byte offsets;
* routing signals without length bias (issue 13 §4): :meth:`ConfidenceTracker.quantile` (the
  nearest-rank q-th quantile of the token probabilities, exact) and
  :meth:`ConfidenceTracker.window_min` (the lowest mean ℓ̂ over any ``window`` consecutive scored
  tokens). Per token they cost two appends to flat float arrays (ℓ̂ and the compensated prefix
  sum; 16 bytes a scored token, bounded by the job's token cap); a query sorts the ℓ̂ not yet
  sorted into the sorted copy (Timsort merges the two runs) and takes one C-speed pass over the
  prefix sums. ``window_min`` is within ``4·2⁻⁵³·Σ|ℓ̂|/min(window, n)`` nats of the exact value
  (prefix differences of Neumaier sums), 1e-11 for 30,000 tokens of ℓ̂ ≈ −1.

Nothing scored means ``None`` everywhere (never 1.0). Offsets always come from the token's bytes.
Pure Python, no I/O.
"""

from __future__ import annotations

import builtins
import functools
import math
from array import array
from collections.abc import Sequence
from fractions import Fraction
from numbers import Real
from operator import sub
from typing import Any, NamedTuple, Protocol

import msgspec

from worker.events import LowSpan, Summary

__all__ = [
    "FLOOR",
    "ConfidenceTracker",
    "TokenScore",
    "TopCandidate",
    "is_control",
    "nearest_rank",
    "sanitize_logprob",
    "window_min",
]

DEFAULT_QUANTILE_Q = 0.1
"""The ``q`` of ``Summary.quantile`` when a job names none (also ``Summary.p10_prob``'s)."""
DEFAULT_WINDOW = 8
"""The window of ``Summary.window_min`` when a job names none."""

FLOOR = -20.0
_SENTINEL = -9999.0  # OpenAI's "not in the top 20"; anything at or below it is a sentinel
_POSITIVE_NOISE = 0.01  # 0 < ℓ ≤ this is rounding noise and means 0
_TOL = 1e-5  # top-k identity tolerance: |Δℓ| ≤ _TOL + _TOL·|ℓ|
_OVERFLOW = 1.0 + 1e-3  # top-k mass above this is renormalised

_NO_FLAGS: tuple[str, ...] = ()
_F_MISSING = ("missing",)
_F_NAN = ("nan",)
_F_INVALID = ("invalid_positive",)
_F_EXCLUDED = ("excluded_special",)
_F_POSITIVE = ("clamped_positive",)
_F_NEG_INF = ("neg_inf",)
_F_FLOOR = ("clamped_floor",)

# bytes.translate(None, _LEAD_BYTES) keeps only the continuation bytes (0b10xxxxxx).
_LEAD_BYTES = bytes(b for b in range(256) if b & 0xC0 != 0x80)
_exp = math.exp
_CONT_BYTES = bytes(range(0x80, 0xC0))


class TopCandidate(Protocol):
    """One top-k alternative (:class:`worker.upstream.base.Candidate` satisfies it)."""

    @property
    def token(self) -> str: ...

    @property
    def logprob(self) -> float | None: ...

    @property
    def bytes(self) -> builtins.bytes | None: ...


class TokenScore(msgspec.Struct, frozen=True):
    """What :meth:`ConfidenceTracker.add` returns for one token.

    ``logprob_used`` is ℓ̂ (``None`` when the token is not scored); ``flags`` holds the §2/§3.1/§5
    flags; the running values (``confidence`` … ``mean_prob``) are those *after* this token.
    ``char_*``/``byte_*`` locate the token in :attr:`ConfidenceTracker.text` (zero-width for
    excluded tokens). The top-k fields are ``None`` unless the token is scored and came with
    candidates. ``closed_span`` is the span this token closed, if any (offsets without look-ahead,
    text from the bytes seen so far; :meth:`ConfidenceTracker.finish` has the final record).
    """

    logprob_used: float | None
    flags: tuple[str, ...]
    scored: bool
    confidence: float | None
    ewma_confidence: float | None
    min_prob: float | None
    min_index: int | None
    mean_prob: float | None
    low: bool
    char_start: int
    char_end: int
    byte_start: int
    byte_end: int
    margin: float | None = None
    chosen_rank: int | None = None
    tail_mass: float | None = None
    entropy_lb: float | None = None
    entropy_lump: float | None = None
    entropy_ub: float | None = None
    closed_span: LowSpan | None = None


def is_control(special: bool | None, text: str, raw_bytes: builtins.bytes | None) -> bool:
    """Whether a token is a special/control token (confidence.md §5 detection order).

    The provider's flag wins: ``True`` is a control token and ``False`` never is (an explicit
    ``special: false`` with empty text and no bytes is part of a character a later token completes,
    TGI/DeepInfra native). Only when the provider said nothing (``None``) does a token with no text
    and no bytes (a stop token whose text was stripped) count as one.
    """
    if special is None:
        return not (text or raw_bytes)
    return special


def sanitize_logprob(raw: object, floor: float = FLOOR) -> tuple[float | None, tuple[str, ...]]:
    """ℓ̂ and its flags per confidence.md §2; ``None`` means the token is not scored."""
    if type(raw) is float:
        lp = raw
    elif raw is None or isinstance(raw, bool) or not isinstance(raw, Real):
        return None, _F_MISSING
    else:
        try:
            lp = float(raw)
        except OverflowError:  # an int beyond float range
            return (floor, _F_NEG_INF) if raw < 0 else (None, _F_INVALID)
    if lp != lp:
        return None, _F_NAN
    if lp > 0.0:
        return (0.0, _F_POSITIVE) if lp <= _POSITIVE_NOISE else (None, _F_INVALID)
    if lp <= _SENTINEL:
        return floor, _F_NEG_INF
    if lp < floor:
        return floor, _F_FLOOR
    return lp + 0.0, _NO_FLAGS  # + 0.0 turns -0.0 into 0.0


def nearest_rank(q: float, n: int) -> int:
    """The 1-based rank of the nearest-rank ``q``-quantile of ``n`` values: ``max(1, ceil(q·n))``,
    with ``q`` read as the decimal it prints as (0.1 is 1/10: ``ceil(0.1·30)`` is 3, where float
    arithmetic gives 4), so hand-made expectations hold exactly."""
    if not 0.0 < q <= 1.0:
        raise ValueError(f"q must be in (0, 1], got {q!r}")
    numerator, denominator = _decimal_ratio(q)
    return max(1, -((-numerator * n) // denominator))


@functools.lru_cache(maxsize=256)
def _decimal_ratio(q: float) -> tuple[int, int]:
    """``q`` as the decimal it prints as, in lowest terms (parsing a ``Fraction`` is ~2.5 µs: a
    job's few ``q`` are parsed once, not at every summary)."""
    frac = Fraction(repr(q))
    return frac.numerator, frac.denominator


def window_min(prefix: Sequence[float], window: int) -> float | None:
    """The lowest mean over any ``window`` consecutive values, from their prefix sums ``prefix``
    (``prefix[0] == 0``, ``prefix[i]`` the sum of the first ``i``); the mean of all of them when
    there are fewer than ``window``; None for none."""
    if window < 1:
        raise ValueError(f"window must be positive, got {window!r}")
    n = len(prefix) - 1
    if n <= 0:
        return None
    if n <= window:
        return prefix[n] / n
    lowest: float = min(map(sub, prefix[window:], prefix[: n + 1 - window]))
    return lowest / window


class _Neumaier:
    """Neumaier-compensated float64 sum."""

    __slots__ = ("c", "s")

    def __init__(self) -> None:
        self.s = 0.0
        self.c = 0.0

    def add(self, x: float) -> None:
        s = self.s
        t = s + x
        if abs(s) >= abs(x):
            self.c += (s - t) + x
        else:
            self.c += (x - t) + s
        self.s = t

    @property
    def value(self) -> float:
        return self.s + self.c


# ---------------------------------------------------------------------------------------------
# UTF-8 offsets


def _seq_len(lead: int) -> int:
    """Length of the UTF-8 sequence a lead byte announces (1 for ASCII and invalid leads)."""
    if lead < 0xC0:
        return 1
    if lead < 0xE0:
        return 2
    if lead < 0xF0:
        return 3
    return 4 if lead < 0xF8 else 1


def _cp_end(buf: bytearray, pos: int, *, pending: bool) -> int:
    """End of the code point whose lead byte is ``buf[pos]``.

    It runs over the continuation bytes present, up to the length the lead byte announces. When the
    buffer ends first and ``pending`` is true (more tokens may come), the announced end is returned:
    offsets need no look-ahead (confidence.md §3.2).
    """
    need = pos + _seq_len(buf[pos])
    size = len(buf)
    end = pos + 1
    while end < need and end < size and buf[end] & 0xC0 == 0x80:
        end += 1
    return need if pending and end == size else end


# ---------------------------------------------------------------------------------------------
# Top-k (§3.1)


class _TopK(NamedTuple):
    margin: float | None
    chosen_rank: int
    tail_mass: float
    entropy_lb: float
    entropy_lump: float
    entropy_ub: float | None
    flags: tuple[str, ...]


def _topk_logprob(raw: object) -> float | None:
    """A candidate's logprob after §3.1 step 1, ``None`` when the entry is dropped."""
    if type(raw) is float:
        lp = raw
    elif raw is None or isinstance(raw, bool) or not isinstance(raw, Real):
        return None
    else:
        try:
            lp = float(raw)
        except OverflowError:
            return None
    if lp != lp or lp > _POSITIVE_NOISE or lp <= _SENTINEL:
        return None
    return 0.0 if lp >= 0.0 else lp


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= _TOL + _TOL * abs(b)


def _find(keys: list[bytes], lps: list[float], start: int, key: bytes, lp: float) -> int:
    """Index ≥ ``start`` of an entry with the same bytes and a logprob within tolerance, or -1."""
    for i in range(start, len(lps)):
        if keys[i] == key and _close(lp, lps[i]):
            return i
    return -1


def _entropy_lb(h_known: float, tail: float, cap: float, ln_cap: float) -> float:
    """H_known − m·c·ln c − r·ln r with m = ⌊R/c⌋, r = R − m·c (0·ln 0 := 0)."""
    if tail <= 0.0:
        return h_known
    if cap <= 0.0:  # c underflowed: the limit c → 0 of m·c·ln c + r·ln r is R·ln c
        return h_known - tail * ln_cap
    r = math.fmod(tail, cap)  # exact R − m·c
    lb = h_known - (tail - r) * ln_cap
    return lb - r * math.log(r) if r > 0.0 else lb


def _topk(
    top: Sequence[TopCandidate],
    chosen_bytes: bytes,
    chosen_text: str,
    chosen_lp: float,
    vocab_size: int | None,
) -> _TopK | None:
    """Per-token top-k metrics; ``None`` when no provider entry survives the §3.1 filter."""
    lps: list[float] = []
    keys: list[bytes] = []
    first: dict[bytes, int] = {}
    duplicate = False
    for cand in top:
        lp = _topk_logprob(cand.logprob)
        if lp is None:
            continue
        raw = cand.bytes
        key = raw if raw is not None else cand.token.encode("utf-8", "replace")
        j = first.setdefault(key, len(lps))
        if j != len(lps) and _find(keys, lps, j, key, lp) >= 0:
            duplicate = True
            continue
        lps.append(lp)
        keys.append(key)
    n_list = len(lps)
    if n_list == 0:
        return None
    chosen = _locate_chosen(keys, lps, first, chosen_bytes, chosen_text, chosen_lp)
    if chosen < 0:
        lps.append(chosen_lp)
        chosen = n_list
    return _topk_metrics(lps, n_list, chosen, vocab_size, duplicate, chosen == n_list)


def _locate_chosen(
    keys: list[bytes],
    lps: list[float],
    first: dict[bytes, int],
    chosen_bytes: bytes,
    chosen_text: str,
    chosen_lp: float,
) -> int:
    j = first.get(chosen_bytes)
    found = -1 if j is None else _find(keys, lps, j, chosen_bytes, chosen_lp)
    if found < 0:  # an entry without bytes is matched on its string (§3.1 step 2)
        alt = chosen_text.encode("utf-8", "replace")
        j = first.get(alt) if alt != chosen_bytes else None
        found = -1 if j is None else _find(keys, lps, j, alt, chosen_lp)
    return found


def _topk_metrics(
    lps: list[float],
    n_list: int,
    chosen: int,
    vocab_size: int | None,
    duplicate: bool,
    appended: bool,
) -> _TopK:
    """§3.1 steps 4–7 and the per-token outputs over the unique known candidates ``lps``."""
    qs = [math.exp(lp) for lp in lps]
    total = math.fsum(qs)
    overflow = total > _OVERFLOW
    if overflow:
        ln_total = math.log(total)
        qs = [q / total for q in qs]
        tail = 0.0
    else:
        ln_total = 0.0
        tail = max(0.0, 1.0 - total)
    h_known = 0.0 - math.fsum([q * (lp - ln_total) for q, lp in zip(qs, lps, strict=True)])
    lump = h_known - tail * math.log(tail) if tail > 0.0 else h_known
    min_lp = min(lps[:n_list]) if appended else min(lps)
    lb = _entropy_lb(h_known, tail, math.exp(min_lp - ln_total), min_lp - ln_total)
    ub = None
    if vocab_size is not None:
        ub = lump + tail * math.log(max(vocab_size - len(lps), 1)) if tail > 0.0 else lump
    q_chosen = qs[chosen]
    rank = 1
    for q in qs:
        if q > q_chosen:
            rank += 1
    margin = None
    if len(qs) >= 2:
        q1, q2 = sorted(qs, reverse=True)[:2]
        margin = q1 - q2
    flags: tuple[str, ...] = _NO_FLAGS
    if duplicate:
        flags += ("topk_duplicate",)
    if appended:
        flags += ("chosen_not_in_topk",)
    if overflow:
        flags += ("topk_mass_overflow",)
    return _TopK(margin, rank, tail, lb, lump, ub, flags)


# ---------------------------------------------------------------------------------------------
# Low-confidence spans (§3.2)


class _SpanRecord(NamedTuple):
    start_token: int
    end_token: int
    char_start: int
    char_end: int
    byte_start: int
    byte_end: int  # end of the last token's bytes, before the code-point extension
    last_lead: int  # position of the last UTF-8 lead byte inside the span, -1 if none
    min_lp: float
    min_index: int
    n_tokens: int
    mean_logprob: float

    def low_span(self, buf: bytearray, *, final: bool) -> LowSpan:
        """The published record: ``byte_end`` extended over the last code point, text decoded.

        ``final`` (end of stream) extends over the continuation bytes actually in ``buf`` only;
        otherwise a code point cut by the end of ``buf`` counts with the length its lead announces.
        """
        end = self.byte_end
        if self.last_lead >= 0:
            end = max(end, _cp_end(buf, self.last_lead, pending=not final))
        return LowSpan(
            start_token=self.start_token,
            end_token=self.end_token,
            char_start=self.char_start,
            char_end=self.char_end,
            byte_start=self.byte_start,
            byte_end=end,
            text=bytes(buf[self.byte_start : end]).decode("utf-8", "replace"),
            min_prob=math.exp(self.min_lp),
            min_index=self.min_index,
            n_tokens=self.n_tokens,
            mean_logprob=self.mean_logprob,
        )


class _SpanBuilder:
    """The open span (if any) and the closed ones, as raw records."""

    __slots__ = (
        "byte_end",
        "byte_start",
        "char_end",
        "char_start",
        "closed",
        "is_open",
        "last_lead",
        "min_index",
        "min_lp",
        "n_tokens",
        "start_token",
        "sum",
    )

    def __init__(self) -> None:
        self.closed: list[_SpanRecord] = []
        self.is_open = False
        self.start_token = self.n_tokens = self.min_index = 0
        self.char_start = self.char_end = self.byte_start = self.byte_end = 0
        self.last_lead = -1
        self.min_lp = 0.0
        self.sum = _Neumaier()

    def extend(self, index: int, cs: int, ce: int, bs: int, be: int, lead: int, lp: float) -> None:
        """Add the low scored token ``index`` (a new span opens if none is)."""
        if not self.is_open:
            self.is_open = True
            self.start_token = self.min_index = index
            self.char_start = cs
            self.byte_start = bs
            self.min_lp = lp
            self.n_tokens = 0
            self.last_lead = -1
            self.sum = _Neumaier()
        elif lp < self.min_lp:
            self.min_lp = lp
            self.min_index = index
        self.char_end = ce
        self.byte_end = be
        if lead >= 0:
            self.last_lead = lead
        self.n_tokens += 1
        self.sum.add(lp)

    def record(self) -> _SpanRecord:
        n = self.n_tokens
        return _SpanRecord(
            self.start_token,
            self.start_token + n,
            self.char_start,
            self.char_end,
            self.byte_start,
            self.byte_end,
            self.last_lead,
            self.min_lp,
            self.min_index,
            n,
            self.sum.value / n,
        )

    def close(self) -> _SpanRecord:
        rec = self.record()
        self.closed.append(rec)
        self.is_open = False
        return rec


# ---------------------------------------------------------------------------------------------
# The tracker


class ConfidenceTracker:
    """Incremental confidence metrics of one token stream (one output channel).

    ``low_prob`` is τ (a scored token is low iff exp(ℓ̂) < τ), ``floor`` is F, ``alpha`` the EWMA
    weight, ``vocab_size`` enables ``entropy_ub``. ``include_special`` scores special tokens
    (lm-polygraph / Whisper behaviour) instead of excluding them from scores, text and offsets.

    Counters: ``n_tokens`` = ``n_scored`` + ``n_missing`` + ``n_excluded``. ``n_missing`` counts
    every non-excluded token that is not scored (flags ``missing``, ``nan``, ``invalid_positive``).
    ``n_clamped`` counts the scored tokens whose ℓ̂ differs from the provider's ℓ: flags
    ``clamped_positive``, ``clamped_floor`` *and* ``neg_inf`` (−inf and sentinels are clamped to F,
    confidence.md §0 "Floor"). Top-k metrics are computed for scored tokens only (the chosen ℓ̂ is
    needed for its rank); ``n_topk`` counts those tokens.
    """

    __slots__ = (
        "_alpha",
        "_buf",
        "_chars",
        "_conf",
        "_ent_max",
        "_ent_max_index",
        "_ent_sum",
        "_ewma",
        "_finished",
        "_floor",
        "_include_special",
        "_lps",
        "_lsum",
        "_margin_sum",
        "_min_index",
        "_min_lp",
        "_min_prob",
        "_n_bytes",
        "_n_clamped",
        "_n_excluded",
        "_n_margin",
        "_n_missing",
        "_n_not_top1",
        "_n_scored",
        "_n_tokens",
        "_n_topk",
        "_prefix",
        "_psum",
        "_quantile_q",
        "_sorted",
        "_spans",
        "_tau",
        "_vocab_size",
        "_window",
    )

    def __init__(
        self,
        low_prob: float = 0.2,
        *,
        include_special: bool = False,
        floor: float = FLOOR,
        alpha: float = 0.1,
        vocab_size: int | None = None,
        quantile_q: float = DEFAULT_QUANTILE_Q,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        nearest_rank(quantile_q, 1)  # validates q
        if window < 1:
            raise ValueError(f"window must be positive, got {window!r}")
        if not 0.0 <= low_prob <= 1.0:
            raise ValueError(f"low_prob must be in [0, 1], got {low_prob!r}")
        if not (math.isfinite(floor) and floor < 0.0):
            raise ValueError(f"floor must be a finite negative number, got {floor!r}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        if vocab_size is not None and vocab_size < 1:
            raise ValueError(f"vocab_size must be positive, got {vocab_size!r}")
        self._tau = low_prob
        self._include_special = include_special
        self._floor = floor
        self._alpha = alpha
        self._vocab_size = vocab_size
        self._buf = bytearray()
        self._chars = 0
        self._lsum = _Neumaier()
        self._psum = _Neumaier()
        self._n_tokens = self._n_scored = self._n_missing = self._n_excluded = 0
        self._n_clamped = self._n_bytes = 0
        self._conf: float | None = None
        self._ewma: float | None = None
        self._min_lp: float | None = None
        self._min_prob: float | None = None
        self._min_index: int | None = None
        self._ent_sum = _Neumaier()
        self._margin_sum = _Neumaier()
        self._n_topk = self._n_margin = self._n_not_top1 = 0
        self._ent_max: float | None = None
        self._ent_max_index: int | None = None
        self._spans = _SpanBuilder()
        self._finished = False
        self._quantile_q = quantile_q
        self._window = window
        self._lps = array("d")  # ℓ̂ of the scored tokens, in order
        self._prefix = array("d", (0.0,))  # compensated Σℓ̂ after each scored token
        self._sorted: list[float] = []  # the first len(_sorted) of _lps, sorted

    # -- per token ------------------------------------------------------------------------------

    def add(
        self,
        text: str,
        logprob: float | None,
        special: bool | None = None,
        raw_bytes: bytes | None = None,
        top: Sequence[TopCandidate] | None = None,
    ) -> TokenScore:
        """Score one token entry and return the running values after it (the arguments may be
        given by position: the worker's hot path does, once per token).

        The token's bytes are ``raw_bytes`` when non-empty, else the UTF-8 of ``text``. ``special``
        is the provider's flag, tri-state (:func:`is_control`): ``True`` excludes the token,
        ``False`` scores it even with no bytes at all (zero-width offsets), and ``None`` (the
        provider said nothing) excludes a token with no bytes as a control token.
        """
        if self._finished:
            raise RuntimeError("add() after finish()")
        index = self._n_tokens
        self._n_tokens = index + 1
        data = raw_bytes or (text.encode("utf-8", "replace") if text else b"")
        if (special is True or (special is None and not data)) and not self._include_special:  # is_control
            self._n_excluded += 1
            return self._unscored(_F_EXCLUDED, self._chars, len(self._buf))
        buf = self._buf
        bs = len(buf)
        buf += data
        be = len(buf)
        n_data = be - bs
        cs = self._chars
        if data.isascii():
            lead = be - 1 if data else -1
            ce = cs + n_data
        else:
            n_lead = len(data.rstrip(_CONT_BYTES))
            lead = bs + n_lead - 1 if n_lead else -1
            ce = cs + n_data - len(data.translate(None, _LEAD_BYTES))
        self._chars = ce
        if type(logprob) is float and self._floor <= logprob <= 0.0 and logprob > _SENTINEL:
            lp, flags = logprob + 0.0, _NO_FLAGS  # sanitize_logprob's answer for the common case
        else:
            sanitized, flags = sanitize_logprob(logprob, self._floor)
            if sanitized is None:
                self._n_missing += 1
                return self._unscored(flags, cs, bs)
            lp = sanitized
            if flags:
                self._n_clamped += 1
        # the running metrics, the Neumaier sums inline (this runs once per token). Every ℓ̂ is in
        # [F, 0] and every exp(ℓ̂) in [0, 1], so each sum keeps one sign and _Neumaier.add's
        # |s| >= |x| is s <= ℓ̂ for Σℓ̂ and s >= p for Σp: the same test without abs().
        p = _exp(lp)
        lsum = self._lsum
        s = lsum.s
        t = s + lp
        lsum.c += (s - t) + lp if s <= lp else (lp - t) + s
        lsum.s = t
        total = t + lsum.c
        self._lps.append(lp)
        self._prefix.append(total)
        psum = self._psum
        s = psum.s
        t = s + p
        psum.c += (s - t) + p if s >= p else (p - t) + s
        psum.s = t
        n = self._n_scored = self._n_scored + 1
        self._n_bytes += n_data
        ewma = self._ewma
        ewma = self._ewma = lp if ewma is None else ewma + self._alpha * (lp - ewma)
        min_lp = self._min_lp
        if min_lp is None or lp < min_lp:
            self._min_lp = lp
            self._min_prob = p
            self._min_index = index
        conf = self._conf = _exp(total / n)
        low = p < self._tau
        closed = None
        spans = self._spans
        if low:
            spans.extend(index, cs, ce, bs, be, lead, lp)
        elif spans.is_open:
            closed = spans.close().low_span(buf, final=False)
        if top:
            tk = _topk(top, data, text, lp, self._vocab_size)
            if tk is not None:
                self._add_topk(index, tk)
                return self._result(lp, flags + tk.flags, low, cs, ce, bs, be, tk, closed)
        # positional: several times faster than keywords for a 20-field struct
        return TokenScore(
            lp, flags, True, conf, _exp(ewma), self._min_prob, self._min_index, (psum.s + psum.c) / n,
            low, cs, ce, bs, be, None, None, None, None, None, None, closed,
        )  # fmt: skip

    def _add_topk(self, index: int, tk: _TopK) -> None:
        self._n_topk += 1
        ent = tk.entropy_lb
        self._ent_sum.add(ent)
        if self._ent_max is None or ent > self._ent_max:
            self._ent_max = ent
            self._ent_max_index = index
        if tk.margin is not None:
            self._n_margin += 1
            self._margin_sum.add(tk.margin)
        if tk.chosen_rank != 1:
            self._n_not_top1 += 1

    def _unscored(self, flags: tuple[str, ...], cs: int, bs: int) -> TokenScore:
        """A token that is not scored: it closes any open span; the running values stay."""
        closed = None
        if self._spans.is_open:
            closed = self._spans.close().low_span(self._buf, final=False)
        ce = self._chars
        be = len(self._buf)
        return self._result(None, flags, False, cs, ce, bs, be, None, closed)

    def _result(
        self,
        lp: float | None,
        flags: tuple[str, ...],
        low: bool,
        cs: int,
        ce: int,
        bs: int,
        be: int,
        tk: _TopK | None,
        closed: LowSpan | None,
    ) -> TokenScore:
        n = self._n_scored
        ewma = self._ewma
        conf = self._conf
        ewma_conf = None if ewma is None else math.exp(ewma)
        min_prob = self._min_prob
        min_index = self._min_index
        mean_prob = self._psum.value / n if n else None
        scored = lp is not None
        # positional: several times faster than keywords for a 20-field struct
        if tk is None:
            return TokenScore(
                lp, flags, scored, conf, ewma_conf, min_prob, min_index, mean_prob, low,
                cs, ce, bs, be, None, None, None, None, None, None, closed,
            )  # fmt: skip
        return TokenScore(
            lp, flags, scored, conf, ewma_conf, min_prob, min_index, mean_prob, low,
            cs, ce, bs, be, tk.margin, tk.chosen_rank, tk.tail_mass,
            tk.entropy_lb, tk.entropy_lump, tk.entropy_ub, closed,
        )  # fmt: skip

    # -- running and final values -----------------------------------------------------------------

    @property
    def text(self) -> str:
        """The text so far: the bytes of every non-excluded token, decoded (errors replaced)."""
        return self._buf.decode("utf-8", "replace")

    @property
    def confidence(self) -> float | None:
        return self._conf

    @property
    def n_tokens(self) -> int:
        return self._n_tokens

    @property
    def mean_entropy_lb(self) -> float | None:
        """Running mean of ``entropy_lb`` over the tokens with top-k (None before the first)."""
        return self._ent_sum.value / self._n_topk if self._n_topk else None

    @property
    def max_entropy_lb(self) -> float | None:
        return self._ent_max

    @property
    def n_not_top1(self) -> int:
        return self._n_not_top1

    @property
    def n_scored(self) -> int:
        return self._n_scored

    @property
    def n_margin(self) -> int:
        """Tokens whose top-k gave a margin (two candidates or more)."""
        return self._n_margin

    @property
    def mean_margin(self) -> float | None:
        """Running mean of the top-1/top-2 probability margin (None before a token with two
        candidates): the ``margin`` routing signal."""
        return self._margin_sum.value / self._n_margin if self._n_margin else None

    def quantile(self, q: float | None = None) -> float | None:
        """The nearest-rank ``q``-th quantile (default: this tracker's ``quantile_q``) of the scored
        tokens' probabilities exp(ℓ̂) so far, exact (:func:`nearest_rank`); None before the first."""
        lps = self._lps
        n = len(lps)
        if not n:
            return None
        ranked = self._sorted
        if len(ranked) < n:  # merge the new values in: Timsort sees two sorted runs
            ranked.extend(sorted(lps[len(ranked) :]))
            ranked.sort()
        return math.exp(ranked[nearest_rank(self._quantile_q if q is None else q, n) - 1])

    def window_min(self, window: int | None = None) -> float | None:
        """The lowest mean ℓ̂ (nats) over any ``window`` (default: this tracker's) consecutive scored
        tokens so far; the mean of all of them while fewer were scored; None before the first."""
        return window_min(self._prefix, self._window if window is None else window)

    def _means(self) -> dict[str, Any]:
        n = self._n_scored
        if not n:
            return {"mean_logprob": None, "perplexity": None, "mean_prob": None, "bpb": None}
        total = self._lsum.value
        mean = total / n
        bpb = (0.0 - total) / (math.log(2) * self._n_bytes) if self._n_bytes else None
        return {
            "mean_logprob": mean,
            "perplexity": math.exp(-mean),
            "mean_prob": self._psum.value / n,
            "bpb": bpb,
        }

    def _topk_running(self) -> dict[str, Any]:
        return {
            "mean_entropy_lb": self.mean_entropy_lb,
            "max_entropy_lb": self._ent_max,
            "max_entropy_index": self._ent_max_index,
            "mean_margin": self.mean_margin,
        }

    def running(self) -> dict[str, Any]:
        """The ``running`` object of confidence.md §6 (``open_span`` ``None`` when none is open)."""
        means = self._means()
        ewma = self._ewma
        return {
            "confidence": self._conf,
            "mean_logprob": means["mean_logprob"],
            "cum_logprob": self._lsum.value,
            "perplexity": means["perplexity"],
            "min_prob": self._min_prob,
            "min_index": self._min_index,
            "ewma_confidence": None if ewma is None else math.exp(ewma),
            "mean_prob": means["mean_prob"],
            "bits_per_byte": means["bpb"],
            "n_tokens": self._n_tokens,
            "n_scored": self._n_scored,
            "n_missing": self._n_missing,
            "n_excluded": self._n_excluded,
            "n_clamped": self._n_clamped,
            "n_topk": self._n_topk,
            "n_not_top1": self._n_not_top1,
            **self._topk_running(),
            "open_span": self._open_span(),
        }

    def _open_span(self) -> dict[str, Any] | None:
        """The open span as §6 ``running.open_span`` (no text; ``byte_end`` without look-ahead)."""
        spans = self._spans
        if not spans.is_open:
            return None
        rec = spans.record()
        end = rec.byte_end
        if rec.last_lead >= 0:
            end = max(end, _cp_end(self._buf, rec.last_lead, pending=True))
        return {
            "start_token": rec.start_token,
            "end_token": rec.end_token,
            "char_start": rec.char_start,
            "char_end": rec.char_end,
            "byte_start": rec.byte_start,
            "byte_end": end,
            "n_tokens": rec.n_tokens,
            "min_prob": math.exp(rec.min_lp),
            "min_index": rec.min_index,
            "mean_logprob": rec.mean_logprob,
        }

    def spans(self) -> list[LowSpan]:
        """The closed spans so far (the open one is closed by :meth:`finish`).

        Recomputed on each call from the byte buffer, so a span whose last code point was completed
        by later tokens gets its extended ``byte_end`` and full text. Before :meth:`finish`, a code
        point cut by the end of the buffer counts with its announced length (no look-ahead); after
        it, only the bytes that arrived count.
        """
        buf = self._buf
        final = self._finished
        return [rec.low_span(buf, final=final) for rec in self._spans.closed]

    def finish(self) -> Summary:
        """End of stream: close the open span and return the summary (idempotent)."""
        self._finished = True
        if self._spans.is_open:
            self._spans.close()
        means = self._means()
        ewma = self._ewma
        return Summary(
            mean_logprob=means["mean_logprob"],
            cum_logprob=self._lsum.value,
            perplexity=means["perplexity"],
            min_prob=self._min_prob,
            min_index=self._min_index,
            ewma_confidence=None if ewma is None else math.exp(ewma),
            mean_prob=means["mean_prob"],
            bits_per_byte=means["bpb"],
            n_tokens=self._n_tokens,
            n_scored=self._n_scored,
            n_missing=self._n_missing,
            n_excluded=self._n_excluded,
            n_clamped=self._n_clamped,
            logprobs_available=self._n_scored > 0,
            low_spans=self.spans(),
            n_topk=self._n_topk,
            n_not_top1=self._n_not_top1,
            **self._topk_running(),
            p10_prob=self.quantile(DEFAULT_QUANTILE_Q),
            quantile=self.quantile(),
            quantile_q=self._quantile_q,
            window_min=self.window_min(),
            window=self._window,
        )
