"""The segmenter's boundary rules (abbreviations, decimals, CJK full stops, newlines, quotes after
the stop), its offsets and scores against hand-computed values, bands and verdicts."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.jobs import Review
from worker.segments import MAX_SEGMENT_BYTES, Segmenter, SegmentSpan, band_of, verdict_of


def feed(
    tokens: Sequence[str | tuple[str, float | None]],
    unit: str = "sentence",
    review: Review | None = None,
    raw: dict[int, bytes] | None = None,
) -> tuple[Segmenter, list[SegmentSpan]]:
    """Run tokens (text, or (text, logprob); logprob -0.1 by default) through a segmenter as the
    attempt does; char offsets counted by UTF-8 lead bytes as the confidence tracker does."""
    seg = Segmenter(review or Review(unit=unit))  # type: ignore[arg-type]
    out: list[SegmentSpan] = []
    chars = 0
    for i, tok in enumerate(tokens):
        text, lp = (tok, -0.1) if isinstance(tok, str) else tok
        data = (raw or {}).get(i) or text.encode()
        n = sum(1 for b in data if b & 0xC0 != 0x80)
        out += seg.token(i, text, (raw or {}).get(i), False, lp, (chars, chars + n))
        chars += n
    out += seg.close()
    return seg, out


def texts(tokens: Sequence[str | tuple[str, float | None]], unit: str = "sentence") -> list[str]:
    _seg, out = feed(tokens, unit)
    joined = "".join(t if isinstance(t, str) else t[0] for t in tokens)
    assert "".join(s.text for s in out) == joined  # segments tile the answer
    return [s.text for s in out]


def test_sentences_end_at_stops_followed_by_space() -> None:
    tokens = ["Einstein", " was", " born", " in", " 18", "79", ".", " He", " died", "."]
    assert texts(tokens) == ["Einstein was born in 1879.", " He died."]


def test_abbreviations_and_initials_do_not_end_a_sentence() -> None:
    tokens = [
        "Dr",
        ".",
        " Smith",
        " met",
        " J",
        ".",
        " Doe",
        " in",
        " the",
        " U",
        ".",
        "S",
        ".",
        " Then",
        " left",
        ".",
    ]
    assert texts(tokens) == ["Dr. Smith met J. Doe in the U.S. Then left."]  # the documented limit
    assert texts(["See", " e", ".g", ".", " the", " list", ".", " Prof", ".", " X", " agrees", "."]) == [
        "See e.g. the list.",
        " Prof. X agrees.",
    ]


def test_a_lowercase_word_after_a_dot_continues_the_sentence() -> None:
    assert texts(["It", " costs", " approx", ".", " three", " euros", ".", " Ok"]) == [
        "It costs approx. three euros.",
        " Ok",
    ]


def test_decimals_versions_and_domains_do_not_end_a_sentence() -> None:
    tokens = [
        "Pi",
        " is",
        " 3",
        ".",
        "14",
        " and",
        " v",
        "1",
        ".2",
        " is",
        " on",
        " example",
        ".com",
        ".",
        " Next",
    ]
    assert texts(tokens) == ["Pi is 3.14 and v1.2 is on example.com.", " Next"]


def test_strong_stops_and_quotes_after_the_stop() -> None:
    tokens = ["He", " said", ' "', "Stop", '."', " Then", " why", "?!", " Because", "!", ")", " Ok"]
    assert texts(tokens) == ['He said "Stop."', " Then why?!", " Because!)", " Ok"]
    assert texts(["She", " asked", " “", "why", "?”", " I", " left", "."]) == ["She asked “why?”", " I left."]


def test_cjk_full_stops_need_no_space() -> None:
    assert texts(["東京", "は", "大きい", "。", "大阪", "も", "！", "」", "次", "は", "？", "はい"]) == [
        "東京は大きい。",
        "大阪も！」",
        "次は？",
        "はい",
    ]


def test_a_cjk_stop_split_over_tokens_is_seen_when_it_completes() -> None:
    stop = "。".encode()
    raw = {1: stop[:2], 2: stop[2:]}
    _seg, out = feed(["東京", "", "", "次"], raw=raw)
    assert [s.text for s in out] == ["東京。", "次"]
    assert [
        (s.token_start, s.token_end, s.byte_start, s.byte_end, s.char_start, s.char_end) for s in out
    ] == [
        (0, 3, 0, 9, 0, 3),
        (3, 4, 9, 12, 3, 4),
    ]


def test_newlines_end_sentences_and_attach_to_the_segment_they_end() -> None:
    tokens = [
        "\n\n",
        "Title",
        "\n\n",
        "Body",
        " one",
        ".",
        " Two",
        "\n",
        "- item",
        "\n",
        "1",
        ".",
        " First",
        ".",
    ]
    assert texts(tokens) == ["\n\nTitle\n\n", "Body one.", " Two\n", "- item\n", "1. First."]


def test_line_and_paragraph_units() -> None:
    tokens = ["One", ".", " Two", "\n", "three", "\n", "\n", "Four", " five", "."]
    assert texts(tokens, "line") == ["One. Two\n", "three\n\n", "Four five."]
    assert texts(tokens, "paragraph") == ["One. Two\nthree\n\n", "Four five."]
    assert texts(["a", "\n", "  ", "\n", "b"], "paragraph") == ["a\n  \n", "b"]  # a line of spaces is blank


def test_a_token_spanning_the_cut_stays_with_the_earlier_segment() -> None:
    assert texts(["Hi", ". The", " end", ".\n", "Next"]) == ["Hi. The", " end.\n", "Next"]


def test_segments_are_cut_at_max_segment_bytes() -> None:
    _seg, out = feed(["word "] * (MAX_SEGMENT_BYTES // 5 + 10))
    assert len(out) == 2 and MAX_SEGMENT_BYTES <= len(out[0].text.encode()) < MAX_SEGMENT_BYTES + 5


def test_offsets_and_scores_by_hand() -> None:
    tokens: list[str | tuple[str, float | None]] = [
        ("Einstein", -0.05),
        (" was", -0.1),
        (" born", -0.02),
        (" in", -0.3),
        (" 18", -2.5),
        ("79", -1.9),
        (".", -0.01),
        (" Não", None),
        ("!", -0.7),
    ]
    _seg, out = feed(tokens, review=Review(publish_above=-0.5, review_below=-1.5))
    first, second = out
    assert (first.index, first.text, first.token_start, first.token_end) == (
        0,
        "Einstein was born in 1879.",
        0,
        7,
    )
    assert (first.char_start, first.char_end, first.byte_start, first.byte_end) == (0, 26, 0, 26)
    assert first.n_scored == 7
    assert first.mean_logprob == pytest.approx(-4.88 / 7, abs=1e-15)
    assert first.min_prob == math.exp(-2.5)
    assert first.band == "medium"  # -0.697 is between -1.5 and -0.5
    assert (second.text, second.token_start, second.token_end) == (" Não!", 7, 9)
    assert (second.char_start, second.char_end, second.byte_start, second.byte_end) == (26, 31, 26, 32)
    assert (second.n_scored, second.mean_logprob, second.min_prob, second.band) == (
        1,
        -0.7,
        math.exp(-0.7),
        "medium",
    )


def test_excluded_tokens_are_zero_width_and_unscored() -> None:
    seg = Segmenter(Review())
    assert seg.token(0, "Hi", None, False, -0.2, (0, 2)) == ()
    assert seg.token(1, "<|eot_id|>", None, True, -0.0, (2, 2)) == ()
    (only,) = seg.close()
    assert (only.text, only.token_end, only.byte_end, only.n_scored) == ("Hi", 2, 2, 1)


def test_bands_at_and_around_the_thresholds() -> None:
    review = Review(publish_above=-0.5, review_below=-1.5)
    assert [band_of(x, review) for x in (-0.4999, -0.5, -1.0, -1.5, -1.5001, None)] == [
        "high",
        "medium",
        "medium",
        "medium",
        "low",
        "unscored",
    ]


def test_verdicts_with_exact_values() -> None:
    review = Review(min_confidence=0.5)
    counts = {"high": 3, "medium": 1, "low": 2, "unscored": 0}
    verdict = verdict_of(counts, [1, 4], 0.41234, 10, review)
    assert verdict.decision == "review"
    assert verdict.reasons == [
        "2 low segments (mean logprob under review_below -1.5): 1, 4",
        "confidence 0.4123 under min_confidence 0.5",
    ]
    assert (verdict.n_low, verdict.n_medium, verdict.n_high, verdict.n_unscored) == (2, 1, 3, 0)
    fine = verdict_of({"high": 2, "medium": 0, "low": 0, "unscored": 1}, [], 0.9, 5, review)
    assert (fine.decision, fine.reasons, fine.n_low, fine.n_medium) == ("publish", [], 0, 0)
    empty = verdict_of({"high": 0, "medium": 0, "low": 0, "unscored": 1}, [], None, 0, Review())
    assert empty.decision == "review"
    assert empty.reasons == ["no answer token has a logprob: nothing supports publishing it"]
    many = verdict_of({"high": 0, "medium": 0, "low": 12, "unscored": 0}, list(range(12)), 0.1, 12, Review())
    assert many.reasons == [
        "12 low segments (mean logprob under review_below -1.5): 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, …"
    ]


def test_a_segmenter_verdict_from_its_segments() -> None:
    tokens: list[str | tuple[str, float | None]] = [
        ("Sure", -0.1),
        (".", -0.1),
        (" 18", -2.5),
        ("79", -1.9),
        (".", -0.5),
    ]
    seg, out = feed(tokens)
    assert [s.band for s in out] == ["high", "low"]
    verdict = seg.verdict(0.5)
    assert (verdict.decision, verdict.n_low, verdict.n_high) == ("review", 1, 1)
    assert [s.index for s in seg.low] == [1] and seg.means == [-0.1, pytest.approx(-4.9 / 3, abs=1e-15)]


def test_review_thresholds_are_validated() -> None:
    import msgspec

    with pytest.raises(msgspec.ValidationError, match=r"review_below .* is above review.publish_above"):
        msgspec.convert({"review_below": -0.2, "publish_above": -0.5}, Review)
    with pytest.raises(msgspec.ValidationError, match="publish_above"):
        msgspec.convert({"publish_above": 0.5}, Review)
    with pytest.raises(msgspec.ValidationError, match="unit"):
        msgspec.convert({"unit": "word"}, Review)
    with pytest.raises(msgspec.ValidationError, match="min_confidence"):
        msgspec.convert({"min_confidence": 0}, Review)


_ALPHABET = st.sampled_from([*list('ab .!?。」"\n 3é😀'), "Dr", "U", ".S", "\n\n", " The", "1", "x"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_ALPHABET, max_size=60), st.sampled_from(["sentence", "line", "paragraph"]))
def test_segments_always_tile_the_text_with_consistent_offsets(tokens: list[str], unit: str) -> None:
    _seg, out = feed(list(tokens), unit)
    text = "".join(tokens)
    assert "".join(s.text for s in out) == text
    assert [s.index for s in out] == list(range(len(out)))
    cursor = (0, 0, 0)
    for s in out:
        assert (s.token_start, s.char_start, s.byte_start) == cursor
        assert s.token_end > s.token_start
        assert text[s.char_start : s.char_end] == s.text
        assert text.encode()[s.byte_start : s.byte_end] == s.text.encode()
        cursor = (s.token_end, s.char_end, s.byte_end)
    assert cursor == (len(tokens), len(text), len(text.encode()))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.binary(max_size=6), st.booleans(), st.one_of(st.none(), st.floats())), max_size=40),
    st.sampled_from(["sentence", "line", "paragraph"]),
)
def test_any_upstream_bytes_and_logprobs_are_taken_without_error(
    tokens: list[tuple[bytes, bool, float | None]], unit: str
) -> None:
    """Hostile token bytes (invalid or cut UTF-8), control tokens and any logprob (NaN, inf,
    positive): no exception, and the segments still tile the tokens and their bytes."""
    seg = Segmenter(Review(unit=unit))  # type: ignore[arg-type]
    out: list[SegmentSpan] = []
    chars = 0
    for i, (data, excluded, lp) in enumerate(tokens):
        n = 0 if excluded else sum(1 for b in data if b & 0xC0 != 0x80)
        out += seg.token(i, "", data or None, excluded, lp, (chars, chars + n))
        chars += n
    out += seg.close()
    expected = sum(len(d) for d, excluded, _ in tokens if not excluded)
    cursor = (0, 0)
    for s in out:
        assert (s.token_start, s.byte_start) == cursor and s.token_end > s.token_start
        assert s.mean_logprob is None or (math.isfinite(s.mean_logprob) and -20.0 <= s.mean_logprob <= 0.0)
        cursor = (s.token_end, s.byte_end)
    assert cursor == ((len(tokens), expected) if tokens else (0, 0))
