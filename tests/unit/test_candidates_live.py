"""tail's live view of several candidates (worker/render.py, worker/candidates_view.py): on a
terminal a region redrawn in place as tokens arrive (side by side when wide, one after another
when narrow), its rows cut to the width, hostile text shown harmless, the region replaced by the
board at the done; elsewhere each candidate's complete rows, prefixed ``[k]``, as they come."""

from __future__ import annotations

import asyncio
import io

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.e2e.screenkit import Screen
from worker.candidates_view import _Rows, cells
from worker.events import (
    Cancelled,
    CandidateDone,
    CandidateError,
    CandidateResult,
    Done,
    Error,
    Start,
    Summary,
    Token,
    Usage,
)
from worker.render import FRAME_SECONDS, TerminalView

SUMMARY = Summary(
    mean_logprob=-0.1, cum_logprob=-0.3, perplexity=1.1, min_prob=0.8, min_index=0,
    ewma_confidence=0.9, mean_prob=0.9, bits_per_byte=0.1, n_tokens=3, n_scored=3, n_missing=0,
    n_excluded=0, n_clamped=0, logprobs_available=True, low_spans=[],
)  # fmt: skip

WORDS = {
    0: [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "epsilon",
        "zeta",
        "eta",
        "theta",
        "iota",
        "kappa",
        "lambda",
        "mu",
    ],
    1: ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"],
    2: ["red", "green", "blue", "cyan", "magenta", "yellow", "black", "white", "grey", "pink"],
}


def token(k: int, i: int, text: str) -> Token:
    return Token(job_id="j", attempt=1, index=i, text=text, logprob=-0.1, candidate=k)


def interleaved(upto: int) -> list[Token]:
    """The first ``upto`` words of each candidate, one of each in turn."""
    return [token(k, i, (" " if i else "") + WORDS[k][i]) for i in range(upto) for k in WORDS]


def done() -> Done:
    results = [
        CandidateResult(index=k, rank=k + 1, score=-0.1 * (k + 1), finish_reason="stop", text=" ".join(w))
        for k, w in WORDS.items()
    ]
    return Done(
        job_id="j", attempt=1, finish_reason="stop", text=" ".join(WORDS[0]), usage=Usage(output_tokens=34),
        confidence=0.9, summary=SUMMARY, candidates=results, agreement=1 / 3,
    )  # fmt: skip


def live(width: int, height: int = 24) -> tuple[TerminalView, io.StringIO]:
    out = io.StringIO()
    return TerminalView(out, color=False, width=width, height=height, live=True, clock=lambda: 0.0), out


def test_side_by_side_as_tokens_arrive() -> None:
    view, out = live(120)
    view.show(Start(job_id="j", attempt=1, model="m", provider="p", api="native"))
    for event in interleaved(6):
        view.show(event)
    screen = Screen(120, 24, onlcr=True)
    screen.feed(out.getvalue())
    rows = screen.text().splitlines()
    assert rows[0].startswith("▶ m via p/native")
    heading = rows[1]
    assert heading.index("candidate 0: 6 tokens") < heading.index("candidate 1: 6 tokens")
    assert heading.index("candidate 1: 6 tokens") < heading.index("candidate 2: 6 tokens")
    body = rows[2]
    assert body.startswith("alpha beta gamma delta epsilon zeta")
    assert "one two three four five six" in body and "red green blue cyan magenta yellow" in body
    assert "alphaone" not in screen.text() and "✓ done" not in screen.text()
    assert all(len(row) < 120 for row in rows)
    # the region was redrawn in place: one copy of it on the screen, however many tokens came
    assert screen.text().count("candidate 0:") == 1 and screen.max_up > 0
    # a candidate ends: its line above the region, its heading says so
    view.show(
        CandidateDone(job_id="j", attempt=1, candidate=1, finish_reason="stop", text="", confidence=0.75)
    )
    screen = Screen(120, 24, onlcr=True)
    screen.feed(out.getvalue())
    text = screen.text()
    assert "  candidate 1 done (stop), confidence 0.750" in text
    assert "candidate 1: done, conf 0.750" in text and text.count("candidate 0: 6 tokens") == 1
    # the done: the region gives way to the board, the winner marked
    view.show(done())
    screen = Screen(120, 24, onlcr=True)
    screen.feed(out.getvalue())
    text = screen.text()
    assert "tokens..." not in text and "✓ done (stop)" in text and "★ candidate 0: rank 1" in text
    assert "3 candidates, agreement 0.33" in text


def test_long_text_keeps_to_the_region_and_the_width() -> None:
    view, out = live(90, height=12)
    words = [f"w{i}" for i in range(400)]
    for i, w in enumerate(words):
        view.show(token(0, i, " " + w))
        view.show(token(1, i, " " + w.upper()))
    screen = Screen(90, 12, onlcr=True)
    screen.feed(out.getvalue())
    rows = screen.text().splitlines()
    assert len(rows) <= 12 and all(len(r) < 90 for r in rows)
    assert screen.max_up <= 11  # never above the top of a 12-row terminal
    assert "w399" in rows[-1] and "W399" in rows[-1]  # the last rows of each candidate


def test_one_after_another_when_narrow() -> None:
    view, out = live(40)
    for event in interleaved(4):
        view.show(event)
    screen = Screen(40, 24, onlcr=True)
    screen.feed(out.getvalue())
    rows = screen.text().splitlines()
    heads = [i for i, r in enumerate(rows) if r.startswith("candidate ")]
    assert [rows[i].split(":")[0] for i in heads] == ["candidate 0", "candidate 1", "candidate 2"]
    assert rows[heads[0] + 1].strip() == "alpha beta gamma delta"
    assert rows[heads[1] + 1].strip() == "one two three four"
    assert all(len(r) < 40 for r in rows)


def test_hostile_text_cannot_move_the_cursor() -> None:
    view, out = live(100)
    view.show(token(0, 0, "evil\x1b[2J\x1b]0;title\x07\rtext\ttab"))
    view.show(token(1, 0, "fine"))
    screen = Screen(100, 24, onlcr=True)
    screen.feed(out.getvalue())  # raises on any escape the view did not mean to write
    assert "evil\ufffd[2J\ufffd]0;title\ufffd\ufffdtext tab" in screen.text()


def test_an_error_leaves_the_region_and_a_new_attempt_starts_afresh() -> None:
    view, out = live(100)
    for event in interleaved(2):
        view.show(event)
    error = CandidateError(code="upstream_stalled", message="no bytes for 4 s")
    view.show(CandidateDone(job_id="j", attempt=1, candidate=2, error=error))
    view.show(Start(job_id="j", attempt=2, model="big", provider="p", api="native", reason="escalated"))
    view.show(token(0, 0, "again"))
    screen = Screen(100, 24, onlcr=True)
    screen.feed(out.getvalue())
    text = screen.text()
    # the first attempt's region stays, the failed candidate's error in its column
    assert "candidate 2: failed" in text and "✗ [upstream_stalled] no bytes" in text
    assert "attempt 2, earlier tokens discarded" in text
    after = text.split("attempt 2, earlier tokens discarded", 1)[1]
    assert "candidate 0: 1 tokens" in after and "again" in after and "candidate 1" not in after


def test_a_pipe_gets_complete_rows_as_they_come() -> None:
    out = io.StringIO()
    view = TerminalView(out, color=False, width=30)
    for event in interleaved(5):
        view.show(event)
    lines = out.getvalue().splitlines()
    # rows of 25 cells (30, less the prefix and a free cell): complete ones only
    assert lines == ["[0] alpha beta gamma delta", "[2] red green blue cyan"]
    assert "\x1b[" not in out.getvalue()
    view.show(
        CandidateDone(job_id="j", attempt=1, candidate=0, finish_reason="stop", text="", confidence=0.5)
    )
    lines = out.getvalue().splitlines()
    assert lines[-2:] == ["[0] epsilon", "  candidate 0 done (stop), confidence 0.500"]
    assert all(len(line) < 30 for line in lines if line.startswith("["))
    view.show(done())
    assert "★ candidate 0: rank 1" in out.getvalue()


@settings(max_examples=300, deadline=None)
@given(
    words=st.lists(st.text(alphabet="abcdefgh界", min_size=1, max_size=30), min_size=1, max_size=60),
    width=st.integers(min_value=4, max_value=40),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=20),
)
def test_rows_keep_every_character_within_the_width(words: list[str], width: int, cuts: list[int]) -> None:
    """However the text is split into tokens: no row wider than the width, rows cut at spaces
    (the word stays whole unless it is longer than a row), no character lost or added."""
    text = " ".join(words)
    rows = _Rows(width)
    at = 0
    for cut in [*sorted({min(c, len(text)) for c in cuts}), len(text)]:
        rows.add(text[at:cut])
        at = cut
    rows.finish()
    assert all(cells(row) <= width for row in rows.rows)
    assert "".join(rows.rows).replace(" ", "") == text.replace(" ", "")  # nothing lost, nothing added
    assert all(row == row.strip(" ") for row in rows.rows)  # cut at spaces, which are dropped
    assert " ".join(rows.rows).split() == text.split() or any(cells(w) > width for w in words)


async def test_tokens_within_a_frame_are_drawn_once_when_it_ends() -> None:
    now = [0.0]
    out = io.StringIO()
    view = TerminalView(out, color=False, width=100, height=24, live=True, clock=lambda: now[0])
    view.show(token(0, 0, "first"))  # the first frame: drawn at once
    drawn = out.getvalue()
    now[0] = FRAME_SECONDS / 10
    view.show(token(0, 1, " second"))
    view.show(token(1, 0, "third"))
    assert out.getvalue() == drawn  # within the frame: nothing written yet
    now[0] = FRAME_SECONDS * 2

    def drawn_again() -> bool:
        return "third" in out.getvalue()

    async with asyncio.timeout(5):
        while not drawn_again():
            await asyncio.sleep(FRAME_SECONDS / 5)
    screen = Screen(100, 24, onlcr=True)
    screen.feed(out.getvalue())
    assert "first second" in screen.text() and "third" in screen.text()
    assert screen.text().count("candidate 0:") == 1


EVIL = "x\x1b]52;c;cHduZWQ=\x07\x1b[9A\x9b2J\ry"  # OSC 52 (clipboard), cursor up, C1 CSI, CR
SHOWN = "x\ufffd]52;c;cHduZWQ=\ufffd\ufffd[9A\ufffd2Jy"  # a CR is dropped (CRLF is LF)


def _written(view: TerminalView, out: io.StringIO, events: list[object]) -> str:
    for event in events:
        view.show(event)  # type: ignore[arg-type]
    text = out.getvalue()
    for raw in ("\x1b]", "\x1b[9A", "\x9b", "\x07"):  # (the live region writes CRs itself)
        assert raw not in text, f"{raw!r} from upstream reached the terminal"
    return text


def test_every_upstream_string_tail_prints_is_shown_harmless() -> None:
    """Not only the candidates' text: a finish reason (the provider's own string), an error's code
    and message, a start's reason (a retry names the upstream's error) and a single stream's tokens
    come from upstream or from whoever can XADD to the job's stream; none may write an escape."""
    failed = CandidateError(code=EVIL, message=EVIL)
    summary = msgspec.structs.replace(SUMMARY, low_spans=[])
    candidates = [
        CandidateResult(index=0, rank=1, score=-0.1, finish_reason=EVIL, text="ok"),
        CandidateResult(index=1, rank=None, score=None, finish_reason=None, text="", error=failed),
    ]
    final = Done(
        job_id="j", attempt=1, finish_reason=EVIL, text="ok", usage=Usage(output_tokens=1),
        confidence=0.9, summary=summary, candidates=candidates, agreement=1.0,
    )  # fmt: skip
    for is_live in (True, False):
        out = io.StringIO()
        view = TerminalView(out, color=False, width=100, height=24, live=is_live, clock=lambda: 0.0)
        text = _written(
            view,
            out,
            [
                Start(job_id="j", attempt=2, model=EVIL, provider=EVIL, api="chat", reason=EVIL),
                token(0, 0, "ok"),
                CandidateDone(job_id="j", attempt=1, candidate=0, finish_reason=EVIL, text="ok"),
                CandidateDone(job_id="j", attempt=1, candidate=1, error=failed),
                final,
            ],
        )
        assert text.count(SHOWN) >= 6, text
    for color in (True, False):
        out = io.StringIO()
        view = TerminalView(out, color=color, width=100, height=24)
        single = Token(job_id="j", attempt=1, index=0, text=EVIL, logprob=-0.1)
        text = _written(view, out, [single, Error(job_id="j", attempt=1, code=EVIL, message=EVIL)])
        assert text.count(SHOWN) == 3, text
    out = io.StringIO()
    view = TerminalView(out, color=False)
    _written(view, out, [Cancelled(job_id="j", attempt=1, reason=EVIL)])
    assert SHOWN in out.getvalue()
    out = io.StringIO()
    view = TerminalView(out, color=False)  # a line break of the answer stays one: CRLF as LF
    view.show(Token(job_id="j", attempt=1, index=0, text="a\r\nb\tc\n", logprob=-0.1))
    assert out.getvalue() == "a\nb\tc\n"
