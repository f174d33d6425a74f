"""Deterministic fake LLM output: tokens, log-probabilities and top-k alternatives.

Pure and I/O-free, so every simulated dialect (native, TGI, and later the OpenAI-style shapes)
shapes the same tokens. A :class:`TokenSource` is an endless stream of content tokens seeded from a
stable hash (:func:`stream_seed`): the same seed, model, prompt and request seed give the same
tokens, byte for byte, on every platform and Python run.

The text is English-ish sentences with punctuation, numbers, names and some multi-byte UTF-8
(``café``, ``naïve``, ``→``, an emoji). Function words are near-certain (logprob in about
``[-0.05, 0)``); names, numbers and symbols are uncertain (about ``[-4, -1]``), so low-confidence
spans appear naturally. Logprobs are rounded to bf16 precision (``-2.65625``).

With ``lang="zh"`` or ``"ja"`` the text is Chinese or Japanese (Han, kana, full-width
punctuation, ASCII digits), one token per character, and about half of the characters go as
byte-fallback tokens (Llama-2-style vocabularies hold few of them). Fixed logprobs (``fixed_logprob``
and a run of ``low_run`` tokens at ``low_logprob`` from token ``low_at``) make streams whose
confidence values are known by hand.

A multi-byte character is occasionally (or, when forced, always) emitted as one byte-fallback token
per UTF-8 byte, TGI style: every token but the last has empty text, the last carries the whole
character. ``SimToken.raw`` keeps each token's own bytes, so ``b"".join(raw)`` always equals the
UTF-8 of ``"".join(text)`` over whole characters.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec

__all__ = [
    "BYTE_ID_BASE",
    "CONTINUATION_LOGPROB",
    "EOS_ID",
    "EOS_TEXT",
    "LANGS",
    "SimToken",
    "TokenSource",
    "bf16",
    "estimate_tokens",
    "filler_token",
    "generate",
    "stream_seed",
    "top_tokens",
]

EOS_ID = 2
EOS_TEXT = "</s>"
BYTE_ID_BASE = 3  # Llama-style byte-fallback tokens: <0x00> is id 3, <0xFF> is id 258
_VOCAB_SIZE = 32000
_FIRST_PIECE_ID = BYTE_ID_BASE + 256

_SPLIT_RATE = 0.08  # share of multi-byte characters sent as byte-fallback tokens
_CONTINUATION_LOGPROB = -0.000244140625  # later bytes of a split character: near certain
CONTINUATION_LOGPROB = _CONTINUATION_LOGPROB
_CJK_SPLIT_RATE = 0.5  # share of Chinese/Japanese characters sent as byte-fallback tokens
LANGS = ("en", "zh", "ja")

_SURE, _MID, _UNSURE = 0, 1, 2

_DET = ("the", "a", "this", "each", "every", "our", "their", "that")
_ADJ = (
    "quiet", "simple", "bright", "early", "careful", "small", "rapid", "steady", "clear", "open",
    "distant", "gentle", "practical", "curious", "narrow", "ancient", "naïve", "remarkable",
)  # fmt: skip
_NOUN = (
    "system", "stream", "token", "model", "river", "garden", "signal", "market", "engine",
    "window", "question", "answer", "result", "pattern", "library", "dream", "city", "network",
    "story", "idea", "morning", "surface", "method", "value", "bridge", "café", "harbor",
    "measurement", "experiment", "conversation", "neighborhood", "résumé", "façade", "committee",
)  # fmt: skip
_VERB = (
    "moves", "builds", "returns", "carries", "measures", "keeps", "finds", "changes", "explains",
    "follows", "holds", "reaches", "shapes", "reflects", "connects", "remembers",
)  # fmt: skip
_VERB_PAST = ("built", "found", "measured", "opened", "described", "moved", "changed", "mapped")
_PREP = ("in", "on", "near", "across", "through", "beyond", "under", "with", "toward")
_CONJ = ("and", "but", "while", "because", "so")
_NAME = (
    "Okafor", "Marguerite", "Zoë", "Lindqvist", "Takahashi", "Ngozi", "Béatrice", "Kowalski",
    "Dmitri", "Ana Lucía",
)  # fmt: skip
_PLACE = ("Reykjavík", "Zürich", "Kraków", "Montréal", "São Paulo", "Lagos", "Kyoto", "Valparaíso")
_UNIT = ("percent", "meters", "kilometers", "years", "°C", "tokens", "people", "euros")
_EMOJI = ("🙂", "🚀", "✨")
_ENDINGS = (".", ".", ".", ".", ".", ".", ".", ".", ".", ".", "!", "?", "…")


class SimToken(msgspec.Struct, frozen=True, gc=False):
    """One simulated token.

    ``raw`` is this token's own UTF-8 bytes: for a byte-fallback piece of a split character it is
    the single byte (while ``text`` is ``""``, or the whole character on the last piece).
    """

    id: int
    text: str
    logprob: float
    special: bool = False
    raw: bytes = b""


def bf16(x: float) -> float:
    """``x`` rounded to 8 significant bits, like a bf16 logit (``-2.6543`` → ``-2.65625``)."""
    if x == 0.0 or not math.isfinite(x):
        return 0.0 if x == 0.0 else x
    mantissa, exponent = math.frexp(x)
    return math.ldexp(round(mantissa * 256) / 256, exponent)


def stream_seed(seed: int, model: str, prompt: str, request_seed: int | None = None) -> int:
    """A stable 64-bit seed for one request (hashlib, never Python's salted ``hash()``)."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(msgspec.json.encode([seed, model, request_seed]))
    digest.update(b"\x00")
    digest.update(prompt.encode("utf-8", "surrogatepass"))
    return int.from_bytes(digest.digest(), "big")


def estimate_tokens(text: str) -> int:
    """A rough prompt token count (about four characters per token)."""
    return (len(text) + 3) // 4


def _piece_id(text: str) -> int:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=4).digest()
    return _FIRST_PIECE_ID + int.from_bytes(digest, "big") % (_VOCAB_SIZE - _FIRST_PIECE_ID)


_PIECES: dict[str, tuple[int, bytes]] = {}


def _piece(text: str) -> tuple[int, bytes]:
    """Id and bytes of a vocabulary piece (memoised; the vocabulary is finite)."""
    found = _PIECES.get(text)
    if found is None:
        found = _PIECES[text] = (_piece_id(text), text.encode("utf-8"))
    return found


_WORD_PIECES: dict[tuple[str, bool], tuple[str, ...]] = {}


def _split_word(word: str, space: bool) -> tuple[str, ...]:
    """Sentencepiece-ish pieces: ASCII runs, one piece per non-ASCII character, long runs halved."""
    key = (word, space)
    found = _WORD_PIECES.get(key)
    if found is not None:
        return found
    pieces: list[str] = []
    run = " " if space else ""
    for ch in word:
        if ch.isascii():
            run += ch
            continue
        if run:
            pieces.append(run)
        pieces.append(ch)
        run = ""
    if run:
        pieces.append(run)
    out: list[str] = []
    for piece in pieces:
        if len(piece) > 8:
            cut = len(piece) // 2 + _piece_id(piece) % 3 - 1
            out.extend((piece[:cut], piece[cut:]))
        else:
            out.append(piece)
    found = _WORD_PIECES[key] = tuple(out)
    return found


def _draw_logprob(rng: random.Random, kind: int) -> float:
    if kind == _SURE:
        return bf16(-(0.0001 + 0.05 * rng.random() ** 4))
    if kind == _MID:
        return bf16(-0.05 - 0.95 * rng.random())
    return bf16(-1.0 - 3.0 * rng.random())


class _Composer:
    """Writes sentences as ``(piece, confidence kind)`` lists; keeps spacing state between them."""

    __slots__ = ("hesitant", "out", "rng", "space", "upper")

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.out: list[tuple[str, int]] = []
        self.space = True  # the first token continues the prompt: " The"
        self.upper = True
        self.hesitant = False

    def word(self, word: str, kind: int = _SURE) -> None:
        if self.upper:
            word = word[0].upper() + word[1:]
            self.upper = False
        pieces = _split_word(word, self.space)
        self.space = True
        self.out.append((pieces[0], kind))
        rest = kind if kind == _UNSURE else _SURE
        self.out.extend((piece, rest) for piece in pieces[1:])

    def content(self, words: Sequence[str]) -> None:
        roll = self.rng.random()
        if self.hesitant:
            kind = _UNSURE if roll < 0.5 else _MID
        else:
            kind = _MID if roll < 0.25 else _SURE
        self.word(self.rng.choice(words), kind)

    def punct(self, text: str) -> None:
        self.out.append((text, _SURE))

    def number(self, year: bool = False) -> None:
        roll = self.rng.random()
        if year or roll < 0.25:
            digits = str(self.rng.randint(1850, 2030))
        elif roll < 0.7:
            digits = str(self.rng.randint(2, 999))
        else:
            digits = f"{self.rng.randint(0, 99)}.{self.rng.randint(1, 99)}"
        first = (" " if self.space else "") + digits[0]
        self.space = True
        self.out.append((first, _UNSURE))
        self.out.extend((ch, _UNSURE) for ch in digits[1:])

    def noun_phrase(self, adjective: float = 0.4) -> None:
        self.word(self.rng.choice(_DET))
        if self.rng.random() < adjective:
            self.content(_ADJ)
        self.content(_NOUN)

    def sentence(self) -> list[tuple[str, int]]:
        self.out = []
        self.upper = True
        self.hesitant = self.rng.random() < 0.15
        _SHAPES[self.rng.randrange(len(_SHAPES))](self)
        self.punct(self.rng.choice(_ENDINGS))
        if self.rng.random() < 0.05:
            self.word(self.rng.choice(_EMOJI), _UNSURE)
        if self.rng.random() < 0.12:
            self.punct("\n\n")
            self.space = False
        return self.out


def _shape_plain(c: _Composer) -> None:
    c.noun_phrase()
    c.content(_VERB)
    c.noun_phrase()
    roll = c.rng.random()
    if roll < 0.3:
        c.punct(",")
        c.word(c.rng.choice(_CONJ))
        c.noun_phrase(0.2)
        c.content(_VERB)
    elif roll < 0.4:
        c.word("—")
        c.word(c.rng.choice(_PREP))
        c.noun_phrase()


def _shape_history(c: _Composer) -> None:
    c.word("in")
    c.number(year=True)
    c.punct(",")
    c.word(c.rng.choice(_NAME), _UNSURE)
    c.content(_VERB_PAST)
    c.noun_phrase()
    c.word(c.rng.choice(_PREP))
    c.word(c.rng.choice(_PLACE), _UNSURE)


def _shape_quantity(c: _Composer) -> None:
    c.noun_phrase(0.2)
    c.content(_VERB)
    c.word("about")
    c.number()
    c.word(c.rng.choice(_UNIT), _MID)


def _shape_report(c: _Composer) -> None:
    c.word(c.rng.choice(_NAME), _UNSURE)
    c.word("said")
    c.word("that")
    c.noun_phrase(0.2)
    c.content(_VERB)
    c.word(c.rng.choice(_PREP))
    c.noun_phrase(0.8)


def _shape_arrow(c: _Composer) -> None:
    c.noun_phrase(0.2)
    c.word("→", _MID)
    c.noun_phrase(0.6)


_SHAPES = (
    _shape_plain, _shape_plain, _shape_plain, _shape_history, _shape_quantity, _shape_report,
    _shape_arrow,
)  # fmt: skip

# Chinese and Japanese words by role; one token per character
_ZH_NOUN = (
    "系统", "模型", "数据", "河流", "城市", "花园", "信号", "市场", "问题", "答案", "结果", "方法", "网络",
    "故事", "早晨", "桥梁", "实验", "委员会",
)  # fmt: skip
_JA_NOUN = (
    "システム", "モデル", "データ", "川", "都市", "庭", "信号", "市場", "質問", "答え", "結果", "方法",
    "ネットワーク", "物語", "朝", "橋", "実験",
)  # fmt: skip
_ZH: dict[str, Any] = {
    "det": ("这个", "那个", "每个", "我们的", "他们的"),
    "adj": ("安静的", "简单的", "明亮的", "古老的", "重要的", "遥远的"),
    "noun": _ZH_NOUN,
    "verb": ("改变了", "连接", "测量", "解释", "发现了", "建造了", "保持", "返回"),
    "name": ("李明", "王芳", "张伟", "陈静", "刘洋"),
    "place": ("北京", "上海", "杭州", "成都", "西安"),
    "unit": ("个", "米", "年", "人", "公里"),
    "comma": "，",
    "ends": ("。", "。", "。", "！", "？"),
}
_JA: dict[str, Any] = {
    "det": ("この", "その", "あの", "私たちの"),
    "adj": ("静かな", "簡単な", "明るい", "古い", "大切な", "遠い"),
    "noun": _JA_NOUN,
    "verb": ("を変えました", "をつなぎます", "を測ります", "を説明します", "を見つけました", "を作りました"),
    "name": ("田中さん", "佐藤さん", "鈴木さん", "高橋さん"),
    "place": ("東京", "京都", "大阪", "札幌", "神戸"),
    "unit": ("個", "メートル", "年", "人", "キロ"),
    "comma": "、",
    "ends": ("。", "。", "。", "！", "？"),
}
_CJK = {"zh": _ZH, "ja": _JA}


def _cjk_sentence(rng: random.Random, lex: dict[str, Any]) -> list[tuple[str, int]]:
    """One Chinese or Japanese sentence as ``(character, kind)`` pieces (digits as one piece)."""
    out: list[tuple[str, int]] = []

    def word(role: str, kind: int) -> None:
        text = rng.choice(lex[role])
        out.append((text[0], kind))
        out.extend((ch, _UNSURE if kind == _UNSURE else _SURE) for ch in text[1:])

    shape = rng.randrange(3)
    if shape == 0:  # [det] [adj] noun (は) verb [det] noun
        word("det", _SURE)
        if rng.random() < 0.5:
            word("adj", _MID)
        word("noun", _MID)
        if lex is _JA:
            out.append(("は", _SURE))
        word("noun", _MID)
        word("verb", _MID)
    elif shape == 1:  # name, in place, verb noun
        word("name", _UNSURE)
        out.append(("在" if lex is _ZH else "は", _SURE))
        word("place", _UNSURE)
        out.append((lex["comma"], _SURE))
        word("noun", _MID)
        word("verb", _MID)
    else:  # noun, about N units
        word("noun", _MID)
        out.append(("大约" if lex is _ZH else "約", _SURE))
        out.append((str(rng.randint(2, 999)), _UNSURE))
        word("unit", _MID)
    out.append((rng.choice(lex["ends"]), _SURE))
    return out


_ALT_WORDS = (*_DET, *_PREP, *_CONJ, *_VERB, *_NOUN[:20], *_ADJ[:10])


def _alt_pool(texts: Sequence[str]) -> tuple[tuple[int, str, bytes], ...]:
    """Distinct-id pieces the top-k alternatives are drawn from."""
    pool: dict[int, tuple[int, str, bytes]] = {}
    for text in texts:
        piece_id, raw = _piece(text)
        pool.setdefault(piece_id, (piece_id, text, raw))
    return tuple(pool.values())


_ALT_POOL = _alt_pool((*(" " + w for w in _ALT_WORDS), ",", ".", "\n", " (", ":"))


class TokenSource:
    """An endless, deterministic stream of content tokens for one request.

    ``seed`` is a per-request seed from :func:`stream_seed`. Alternatives (:meth:`alternatives`)
    come from a second generator, so asking for them never changes the token sequence. ``lang``
    picks the text (:data:`LANGS`). ``fixed_logprob``: every token's logprob (the later bytes of a
    split character keep :data:`CONTINUATION_LOGPROB`); the tokens numbered ``low_at`` to
    ``low_at + low_run - 1`` (every token counts, byte pieces too) have ``low_logprob`` instead.
    The random draws are the same whatever the logprobs, so the text does not change with them.
    """

    __slots__ = (
        "_alt_rng", "_cjk", "_composer", "_fixed", "_force_split", "_low", "_n", "_pending", "_rng",
    )  # fmt: skip

    def __init__(
        self,
        seed: int,
        *,
        force_utf8_split: bool = False,
        lang: str = "en",
        fixed_logprob: float | None = None,
        low_at: int = 0,
        low_run: int = 0,
        low_logprob: float = -3.0,
    ) -> None:
        if lang not in LANGS:
            raise ValueError(f"lang must be one of {', '.join(LANGS)}, got {lang!r}")
        self._rng = random.Random(seed)
        self._alt_rng = random.Random(seed ^ 0x5DEECE66D)
        self._composer = _Composer(self._rng)
        self._cjk = _CJK.get(lang)
        self._force_split = force_utf8_split
        self._pending: deque[SimToken] = deque()
        self._fixed = fixed_logprob
        self._low = (low_at, low_at + low_run, low_logprob)
        self._n = 0  # tokens emitted so far

    def __iter__(self) -> TokenSource:
        return self

    def __next__(self) -> SimToken:
        while not self._pending:
            cjk = self._cjk
            pieces = self._composer.sentence() if cjk is None else _cjk_sentence(self._rng, cjk)
            for text, kind in pieces:
                self._emit(text, kind)
        return self._pending.popleft()

    def _logprob(self, drawn: float, *, continuation: bool = False) -> float:
        """The logprob of the next token: ``low_logprob`` in the low run, else ``drawn`` for a
        later byte of a split character or when nothing is fixed, else ``fixed_logprob``."""
        index = self._n
        self._n = index + 1
        start, end, low = self._low
        if start <= index < end:
            return low
        return drawn if continuation or self._fixed is None else self._fixed

    def _emit(self, text: str, kind: int) -> None:
        logprob = _draw_logprob(self._rng, kind)
        if len(text) == 1 and not text.isascii():
            rate = _SPLIT_RATE if self._cjk is None else _CJK_SPLIT_RATE
            split = self._rng.random() < rate  # drawn even when forced: same text either way
            if split or self._force_split:
                self._emit_bytes(text, logprob)
                return
        piece_id, raw = _piece(text)
        self._pending.append(SimToken(piece_id, text, self._logprob(logprob), False, raw))

    def _emit_bytes(self, char: str, logprob: float) -> None:
        raw = char.encode("utf-8")
        last = len(raw) - 1
        for i, byte in enumerate(raw):
            lp = self._logprob(logprob) if i == 0 else self._logprob(_CONTINUATION_LOGPROB, continuation=True)
            self._pending.append(
                SimToken(BYTE_ID_BASE + byte, char if i == last else "", lp, False, raw[i : i + 1])
            )

    def eos(self) -> SimToken:
        """The end-of-sequence token, with a small negative logprob."""
        return SimToken(EOS_ID, EOS_TEXT, bf16(-(0.001 + 0.05 * self._rng.random())), True, b"")

    def alternatives(self, token: SimToken, n: int) -> list[SimToken]:
        """Top-``n`` list consistent with ``token`` (see :func:`top_tokens`)."""
        return top_tokens(token, n, self._alt_rng)

    def events(
        self, n_content: int, *, eos: bool, stop: Sequence[str] = ()
    ) -> Iterator[tuple[SimToken, str | None]]:
        """The tokens of one generation, each with its finish reason (``None`` until the last).

        Up to ``n_content`` content tokens, then the EOS token when ``eos``; otherwise the last
        content token ends the stream with ``"length"``. A stop sequence appearing in the text ends
        it early with ``"stop_sequence"`` on the token that completed it.
        """
        keep = max((len(s) for s in stop), default=0) - 1
        tail = ""
        for i in range(n_content):
            token = next(self)
            if keep >= 0:
                tail += token.text
                if any(s in tail for s in stop):
                    yield token, "stop_sequence"
                    return
                tail = tail[-keep:] if keep else ""
            if i == n_content - 1 and not eos:
                yield token, "length"
                return
            yield token, None
        if eos:
            yield self.eos(), "eos_token"


def generate(
    seed: int,
    prompt: str,
    n_tokens: int,
    *,
    model: str = "",
    request_seed: int | None = None,
    force_utf8_split: bool = False,
    **options: Any,
) -> Iterator[SimToken]:
    """The first ``n_tokens`` content tokens (no EOS) for a seed, model, prompt and request seed;
    ``options`` are :class:`TokenSource`'s (``lang``, ``fixed_logprob``, ``low_at``, ...)."""
    source = TokenSource(
        stream_seed(seed, model, prompt, request_seed), force_utf8_split=force_utf8_split, **options
    )
    return itertools.islice(source, n_tokens)


def _chosen_rank(p: float, n: int, rng: random.Random) -> int:
    """How many alternatives outrank the chosen token (``n``: it is not in the list at all)."""
    if p >= 0.5:
        return 0
    roll = rng.random()
    if roll < 0.5:
        rank = 0
    elif roll < 0.8:
        rank = 1
    elif roll < 0.9 or p > 0.08:
        rank = 2
    else:
        rank = n
    return min(rank, n, int(0.8 / p) - 1)


def _alternative_probs(p: float, n: int, rank: int, rng: random.Random) -> list[float]:
    budget = 0.9 * (1.0 - p)  # the alternatives share at most 90% of the rest
    above = sorted((rng.uniform(p, budget / rank) for _ in range(rank)), reverse=True)
    left = budget - sum(above)
    below: list[float] = []
    prev = p
    for _ in range(n - rank - 1):
        prev = min(prev * rng.uniform(0.2, 0.9), left * 0.5)
        left -= prev
        below.append(prev)
    return above + below


def top_tokens(token: SimToken, n: int, rng: random.Random) -> list[SimToken]:
    """A top-``n`` list, best first, consistent with the sampled ``token``.

    The sampled token appears with its own logprob unless it ranks below the top ``n`` (only for
    unlikely tokens); alternatives are other vocabulary pieces whose probabilities, with the sampled
    token's, sum to less than one.
    """
    if n <= 0:
        return []
    p = math.exp(token.logprob)
    rank = _chosen_rank(p, n, rng)
    probs = _alternative_probs(p, n, rank, rng)
    picks = [alt for alt in rng.sample(_ALT_POOL, n + 1) if alt[0] != token.id][: len(probs)]
    out = [
        SimToken(piece_id, text, bf16(math.log(q)), False, raw)
        for (piece_id, text, raw), q in zip(picks, probs, strict=True)
    ]
    if rank < n:
        out.append(token)
    out.sort(key=lambda t: -t.logprob)
    return out


def filler_token(n_bytes: int) -> SimToken:
    """One oversize token of about ``n_bytes`` ASCII text (for the ``big`` fault)."""
    unit = " lorem ipsum dolor sit amet"
    text = (unit * (n_bytes // len(unit) + 1))[: max(n_bytes, 1)]
    return SimToken(_piece_id(unit), text, -0.5, False, text.encode("ascii"))
