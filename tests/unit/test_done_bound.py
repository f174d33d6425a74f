"""No ``done`` exceeds ``max_event_bytes``: its texts are cut to a prefix (``text_truncated``) and,
if still too large, its low spans (``low_spans_truncated``); a ``done`` that fits is unchanged."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.events import Done, LowSpan, Summary, Usage, bound_done, decode_event, encode_event


def span(i: int) -> LowSpan:
    return LowSpan(
        start_token=i, end_token=i + 1, char_start=i, char_end=i + 1, byte_start=i, byte_end=i + 1,
        text="w" * 20, min_prob=0.01, min_index=i, n_tokens=1, mean_logprob=-4.6,
    )  # fmt: skip


def done(text: str, reasoning: str | None = None, spans: int = 0) -> Done:
    summary = Summary(
        mean_logprob=-0.1, cum_logprob=-1.0, perplexity=1.1, min_prob=0.5, min_index=0,
        ewma_confidence=0.9, mean_prob=0.9, bits_per_byte=0.1, n_tokens=len(text), n_scored=len(text),
        n_missing=0, n_excluded=0, n_clamped=0, logprobs_available=True,
        low_spans=[span(i) for i in range(spans)],
    )  # fmt: skip
    return Done(
        job_id="j", attempt=1, finish_reason="length", text=text, usage=Usage(output_tokens=len(text)),
        confidence=0.9, summary=summary, reasoning_text=reasoning,
    )  # fmt: skip


def test_a_done_that_fits_is_unchanged() -> None:
    small = done("hello")
    assert bound_done(small, 4096) is small
    assert b'"text_truncated":false' in encode_event(small)


def test_a_long_answer_is_cut_to_a_prefix_and_flagged() -> None:
    whole = done("token " * 200_000)
    cut = bound_done(whole, 4096)
    raw = encode_event(cut)
    assert len(raw) <= 4096 and len(raw) > 4000  # as much of the text as fits
    assert cut.text_truncated and whole.text.startswith(cut.text)
    assert decode_event(raw) == cut
    assert msgspec.structs.replace(cut, text=whole.text, text_truncated=False) == whole


def test_the_reasoning_is_cut_after_the_answer() -> None:
    cut = bound_done(done("a" * 1000, reasoning="r" * 100_000), 4096)
    assert cut.text == "a" * 1000 and cut.text_truncated
    assert cut.reasoning_text is not None and set(cut.reasoning_text) <= {"r"}
    assert 2000 < len(cut.reasoning_text) < 3000 and len(encode_event(cut)) <= 4096


def test_too_many_low_spans_are_cut_too() -> None:
    cut = bound_done(done("x" * 10, spans=5000), 8192)
    assert len(encode_event(cut)) <= 8192
    assert cut.summary.low_spans_truncated and 0 < len(cut.summary.low_spans) < 5000
    assert cut.summary.low_spans == [span(i) for i in range(len(cut.summary.low_spans))]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=3000), st.none() | st.text(max_size=3000), st.integers(min_value=900, max_value=9000))
def test_any_text_is_bounded_on_a_code_point(text: str, reasoning: str | None, limit: int) -> None:
    """Escapes (quotes, control characters), multi-byte and astral code points: never over the
    bound, always a prefix, never a broken character, and as much as fits."""
    whole = done(text, reasoning)
    cut = bound_done(whole, limit)
    raw = encode_event(cut)
    assert len(raw) <= limit
    assert decode_event(raw) == cut
    assert text.startswith(cut.text)
    assert reasoning is None or (cut.reasoning_text is not None and reasoning.startswith(cut.reasoning_text))
    if cut.text != text:  # one more code point of the answer would not have fitted
        longer = msgspec.structs.replace(cut, text=text[: len(cut.text) + 1])
        assert len(encode_event(longer)) > limit
    assert cut.text_truncated == (cut != whole)
