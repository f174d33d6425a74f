"""tail's view of several candidates (worker/candidates_view.py): side by side when they fit, one
after another otherwise, the winner marked, a failed candidate with its error."""

from __future__ import annotations

import io

from worker.events import CandidateDone, CandidateError, CandidateResult, Done, Summary, Token, Usage
from worker.render import TerminalView

SUMMARY = Summary(
    mean_logprob=-0.1,
    cum_logprob=-0.3,
    perplexity=1.1,
    min_prob=0.8,
    min_index=0,
    ewma_confidence=0.9,
    mean_prob=0.9,
    bits_per_byte=0.1,
    n_tokens=3,
    n_scored=3,
    n_missing=0,
    n_excluded=0,
    n_clamped=0,
    logprobs_available=True,
    low_spans=[],
)


def events() -> list[object]:
    out: list[object] = []
    for k, words in ((0, ["Spam", "."]), (1, ["Ham", "!"])):
        for i, w in enumerate(words):
            out.append(Token(job_id="j", attempt=1, index=i, text=w, logprob=-0.1, candidate=k))
    out.append(
        CandidateDone(job_id="j", attempt=1, candidate=0, finish_reason="stop", text="Spam.", confidence=0.9)
    )
    error = CandidateError(code="upstream_4xx", message="HTTP 400")
    out.append(CandidateDone(job_id="j", attempt=1, candidate=2, error=error))
    results = [
        CandidateResult(index=0, rank=1, score=-0.1, finish_reason="stop", text="Spam.", confidence=0.9),
        CandidateResult(index=1, rank=2, score=-0.2, finish_reason="stop", text="Ham!", confidence=0.8),
        CandidateResult(index=2, rank=None, score=None, finish_reason=None, text="", error=error),
    ]
    out.append(
        Done(
            job_id="j",
            attempt=1,
            finish_reason="stop",
            text="Spam.",
            usage=Usage(output_tokens=4),
            confidence=0.9,
            summary=SUMMARY,
            candidates=results,
            agreement=0.5,
        )
    )
    return out


def shown(width: int) -> str:
    out = io.StringIO()
    view = TerminalView(out, color=False, width=width)
    for event in events():
        view.show(event)  # type: ignore[arg-type]
    return out.getvalue()


def test_side_by_side_when_wide() -> None:
    text = shown(120)
    assert "candidate 0 done (stop), confidence 0.900" in text
    assert "candidate 2 failed [upstream_4xx] HTTP 400" in text
    assert "3 candidates, agreement 0.50" in text
    heads = [line for line in text.splitlines() if "★ candidate 0" in line]
    assert len(heads) == 1 and "candidate 1: rank 2" in heads[0] and "candidate 2: failed" in heads[0]
    body = text.splitlines()[text.splitlines().index(heads[0]) + 1]
    assert body.startswith("Spam.") and "Ham!" in body and "HTTP 400" in body
    assert "SpamHam" not in text  # the candidates' tokens are never interleaved


def test_one_after_another_when_narrow() -> None:
    lines = shown(40).splitlines()
    heads = [
        i for i, line in enumerate(lines) if "candidate" in line and (": rank" in line or ": failed" in line)
    ]
    assert len(heads) == 3 and heads == sorted(heads)
    assert lines[heads[0]].startswith("★ candidate 0") and lines[heads[0] + 1].strip() == "Spam."
    assert lines[heads[1] + 1].strip() == "Ham!"
