"""Issue 13 §1 end to end (real Redis + the simulator + a worker): a native stream's
``"text": ""`` / ``"special": false`` pieces of a character split across tokens (an emoji, Chinese,
Japanese) are scored, and ``done``'s confidence, mean logprob, EWMA, min and spans equal values
computed by hand from the published tokens, or written out by hand for a stream of known logprobs.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from worker import Client, Done, Job, Token
from worker.jobs import ChatMessage

from .conftest import RunningWorker

pytestmark = pytest.mark.integration

StartWorker = Callable[..., Awaitable[RunningWorker]]
C = -(2.0**-12)  # the simulator's logprob of the later bytes of a split character
TAU = 0.2


async def run(client: Client, model: str, prompt: str = "split me") -> tuple[list[Token], Done]:
    job_id = await client.enqueue(Job(model=model, input=prompt))
    items = [i async for i in client.subscribe(job_id, timeout=30)]
    done = items[-1].event
    assert isinstance(done, Done), done
    return [i.event for i in items if isinstance(i.event, Token)], done


@dataclass
class Reference:
    """The values of confidence.md §3/§3.2 over the content tokens, written out plainly."""

    mean: float
    ewma: float
    min_prob: float
    min_index: int
    n_scored: int
    spans: list[tuple[int, int, int, int, int, int, str]]  # tokens, chars, bytes, text


def reference(tokens: list[Token]) -> Reference:
    logprobs: list[float] = []
    ewma: float | None = None
    lowest: tuple[float, int] | None = None
    spans: list[tuple[int, int, int, int, int, int, str]] = []
    chars = nbytes = 0
    text = ""
    open_span: list[int] | None = None  # start token, char start, byte start

    def close(end: int) -> None:
        nonlocal open_span
        if open_span is not None:
            start, cs, bs = open_span
            spans.append((start, end, cs, chars, bs, nbytes, text[cs:chars]))
            open_span = None

    for i, token in enumerate(tokens):
        if token.special:  # the EOS: not scored, no text, closes a span
            close(i)
            continue
        assert token.logprob is not None and -20.0 < token.logprob <= 0.0
        lp = token.logprob
        logprobs.append(lp)
        ewma = lp if ewma is None else ewma + 0.1 * (lp - ewma)
        if lowest is None or lp < lowest[0]:
            lowest = (lp, i)
        if math.exp(lp) < TAU:
            if open_span is None:
                open_span = [i, chars, nbytes]
        else:
            close(i)
        # native text is whole characters: an empty piece is zero-width, the last one holds them all
        text += token.text
        chars += len(token.text)
        nbytes += len(token.text.encode())
    close(len(tokens))
    assert ewma is not None and lowest is not None
    return Reference(
        math.fsum(logprobs) / len(logprobs), ewma, math.exp(lowest[0]), lowest[1], len(logprobs), spans
    )


def check(tokens: list[Token], done: Done) -> Reference:
    ref = reference(tokens)
    summary = done.summary
    assert summary.n_scored == ref.n_scored == len(tokens) - 1  # every token but the EOS
    assert summary.n_excluded == 1 and summary.n_missing == 0
    assert summary.mean_logprob is not None and math.isclose(summary.mean_logprob, ref.mean, rel_tol=1e-12)
    assert done.confidence is not None and math.isclose(done.confidence, math.exp(ref.mean), rel_tol=1e-12)
    assert summary.ewma_confidence is not None
    assert math.isclose(summary.ewma_confidence, math.exp(ref.ewma), rel_tol=1e-12)
    assert summary.min_prob == ref.min_prob and summary.min_index == ref.min_index
    got = [
        (s.start_token, s.end_token, s.char_start, s.char_end, s.byte_start, s.byte_end, s.text)
        for s in summary.low_spans
    ]
    assert got == ref.spans
    assert done.text == "".join(t.text for t in tokens if not t.special)
    # the token events: an empty piece is an ordinary token, and its running confidence moves
    empty = [t for t in tokens if t.text == "" and not t.special]
    assert empty and all(t.confidence is not None for t in empty)
    assert tokens[-1].special
    return ref


@pytest.mark.parametrize(
    ("model", "script"),
    [
        ("tokenwire/sim;tokens=150;lang=zh;utf8split=1", "\u4e00-\u9fff"),
        ("tokenwire/sim;tokens=150;lang=zh", "\u4e00-\u9fff"),  # about half the characters split
        ("tokenwire/sim;tokens=150;lang=ja;utf8split=1", "\u3040-\u30ff"),  # kana
        ("tokenwire/sim;tokens=150;lang=ja", "\u3040-\u30ff"),
    ],
)
async def test_chinese_and_japanese_native_streams_score_every_piece(
    start_worker: StartWorker, client: Client, model: str, script: str
) -> None:
    await start_worker()
    tokens, done = await run(client, model)
    lo, hi = script.split("-")
    assert any(lo <= ch <= hi for ch in done.text), done.text
    ref = check(tokens, done)
    assert ref.spans  # the names, places and numbers are uncertain: low spans appear
    # pieces of a split character carry "special": false on the wire and are scored
    assert sum(1 for t in tokens if t.text == "") >= 20


async def test_emoji_native_stream(start_worker: StartWorker, client: Client) -> None:
    """English with its emoji (4 bytes: three empty pieces, then the emoji) and accents split."""
    await start_worker()
    tokens, done = await run(client, "tokenwire/sim;tokens=200;utf8split=1", prompt="an emoji")
    emoji = [t for t in tokens if any(ord(ch) > 0xFFFF for ch in t.text)]
    assert emoji, done.text  # this prompt's answer holds an emoji (the stream is deterministic)
    i = tokens.index(emoji[0])
    assert [t.text for t in tokens[i - 3 : i]] == ["", "", ""]
    check(tokens, done)


async def test_known_logprobs_by_hand(start_worker: StartWorker, client: Client) -> None:
    """Seven Chinese byte pieces of known logprobs: the first piece of each character −0.5, its
    later bytes C = −2⁻¹², tokens 3–6 at −2.0. Two characters split in three: ℓ = −0.5, C, C, −2,
    −2, −2, −2 (token 6 is the first piece of the third character), then the EOS."""
    await start_worker()
    tokens, done = await run(
        client, "tokenwire/sim;tokens=7;lang=zh;utf8split=1;lp=-0.5;low_at=3;low_run=4;low_lp=-2.0"
    )
    assert [t.logprob for t in tokens[:7]] == [-0.5, C, C, -2.0, -2.0, -2.0, -2.0]
    assert [t.text == "" for t in tokens[:7]] == [True, True, False, True, True, False, True]
    summary = done.summary
    mean = (-0.5 + 2 * C - 8.0) / 7
    assert summary.n_scored == 7 and summary.mean_logprob is not None
    assert math.isclose(summary.mean_logprob, mean, rel_tol=1e-15)
    assert done.confidence is not None and math.isclose(done.confidence, math.exp(mean), rel_tol=1e-15)
    e = -0.5
    for lp in (C, C, -2.0, -2.0, -2.0, -2.0):
        e += 0.1 * (lp - e)
    assert summary.ewma_confidence is not None and math.isclose(
        summary.ewma_confidence, math.exp(e), rel_tol=1e-15
    )
    assert summary.min_prob == math.exp(-2.0) and summary.min_index == 3
    (span,) = summary.low_spans  # tokens 3..6; the EOS closes it
    second = tokens[5].text
    assert (span.start_token, span.end_token, span.n_tokens) == (3, 7, 4)
    # the second character (tokens 3-5) is in the span; token 6 is a zero-width empty piece
    assert (span.char_start, span.char_end, span.byte_start, span.byte_end) == (1, 2, 3, 6)
    assert span.text == second == done.text[1] and math.isclose(span.mean_logprob, -2.0)
    # the signals of §4 over the same tokens
    assert summary.window_min is not None and math.isclose(summary.window_min, mean)  # 7 < window 8
    assert summary.p10_prob == math.exp(-2.0)


@pytest.mark.parametrize("dialect", ["together", "openai", "vllm"])
async def test_chat_dialects_score_split_pieces(
    start_worker: StartWorker, client: Client, dialect: str
) -> None:
    """The same over chat: Together's number-shaped pieces of a split character (``content: ""``
    mid-stream) are ordinary tokens (special false), only its finishing empty token is the stop
    token; OpenAI and vLLM entries carry the pieces' bytes. Every piece is scored."""
    await start_worker()
    job = Job(
        model=f"tokenwire/sim;tokens=60;lang=zh;utf8split=1;dialect={dialect}",
        api="chat",
        messages=[ChatMessage(role="user", content="split me")],
    )
    job_id = await client.enqueue(job)
    items = [i async for i in client.subscribe(job_id, timeout=30)]
    done = items[-1].event
    assert isinstance(done, Done)
    tokens = [i.event for i in items if isinstance(i.event, Token)]
    content = [t for t in tokens if not t.special]
    assert len(content) == 60 and done.summary.n_scored == 60 and done.summary.n_missing == 0
    assert done.summary.n_excluded == len(tokens) - 60  # the stop token, when the dialect sends one
    lps = [t.logprob for t in content]
    assert all(lp is not None for lp in lps)
    mean = math.fsum(lp for lp in lps if lp is not None) / 60
    assert done.summary.mean_logprob is not None and math.isclose(
        done.summary.mean_logprob, mean, rel_tol=1e-12
    )
    assert any("\u4e00" <= ch <= "\u9fff" for ch in done.text)
