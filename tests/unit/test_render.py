"""The terminal view: tokens shaded by probability, retries announced, a summary with spans."""

from __future__ import annotations

import io

from worker.events import Done, Error, LowSpan, Start, Summary, Token, Usage
from worker.render import RESET, TerminalView, shade


def _summary(spans: list[LowSpan]) -> Summary:
    return Summary(
        mean_logprob=-0.5, cum_logprob=-1.0, perplexity=1.65, min_prob=0.05, min_index=1,
        ewma_confidence=0.7, mean_prob=0.6, bits_per_byte=0.3, n_tokens=2, n_scored=2, n_missing=0,
        n_excluded=0, n_clamped=0, logprobs_available=True, low_spans=spans,
    )  # fmt: skip


def test_shading_follows_probability() -> None:
    assert shade(0.01) == "\x1b[38;5;196m"  # red: unlikely
    assert shade(0.99) == "\x1b[38;5;82m"  # green: certain
    assert shade(None) == "\x1b[38;5;245m"  # grey: no score
    assert shade(0.5) != shade(0.95)


def test_a_job_as_a_person_sees_it() -> None:
    out = io.StringIO()
    view = TerminalView(out, color=True)
    view.show(Start(job_id="j", attempt=1, model="m", provider="p", api="native"))
    view.show(Token(job_id="j", attempt=1, index=0, text="Paris", logprob=-0.01))
    view.show(Token(job_id="j", attempt=1, index=1, text=" 1887", logprob=-3.0))
    view.show(Token(job_id="j", attempt=1, index=2, text="</s>", logprob=-0.1, special=True))
    span = LowSpan(
        start_token=1, end_token=2, char_start=5, char_end=10, byte_start=5, byte_end=10,
        text=" 1887", min_prob=0.05, min_index=1, n_tokens=1, mean_logprob=-3.0,
    )  # fmt: skip
    view.show(
        Done(job_id="j", attempt=1, finish_reason="eos_token", text="Paris 1887",
             usage=Usage(input_tokens=3, output_tokens=3), confidence=0.22, summary=_summary([span]))
    )  # fmt: skip
    text = out.getvalue()
    assert f"{shade(0.99)}Paris{RESET}" in text and f"{shade(0.05)} 1887{RESET}" in text
    assert "</s>" not in text
    assert "✓ done (eos_token): 3 tokens, confidence 0.220" in text
    assert "1 low-confidence span(s) to review" in text and "' 1887'" in text


def test_retries_and_errors_are_announced_plainly() -> None:
    out = io.StringIO()
    view = TerminalView(out, color=False)
    view.show(Start(job_id="j", attempt=2, model="m", provider="p", api="chat", reason="retry after stall"))
    view.show(Token(job_id="j", attempt=2, index=0, text="Hi", logprob=None))
    view.show(Error(job_id="j", attempt=2, code="rate_limited", message="HTTP 429 from upstream: busy"))
    text = out.getvalue()
    assert "attempt 2, earlier tokens discarded" in text and "retry after stall" in text
    assert "Hi" in text and "\x1b[" not in text
    assert "✗ error [rate_limited] HTTP 429 from upstream: busy" in text
