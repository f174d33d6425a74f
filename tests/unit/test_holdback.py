"""The streaming holdback (worker/holdback.py): any tokenisation of any text, secrets redacted."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from worker.confidence import ConfidenceTracker
from worker.holdback import Holdback, holdback_for
from worker.redact import _MIN_CUT, REDACTED, Redactor, _masked
from worker.upstream.base import Candidate, TokenRecord, UpstreamError

ALPHABET = "bxzé😀"  # small (secrets, prefixes, overlaps turn up), non-ASCII, none in "[redacted]"


def reference(text: str, forms: list[str]) -> str:
    """The redacted text, computed on the whole text (every occurrence of every form, and a
    prefix of at least _MIN_CUT characters cut off by the end), by the Redactor's own masking."""
    spans = []
    for form in forms:
        at = text.find(form)
        while at != -1:
            spans.append((at, at + len(form)))
            at = text.find(form, at + 1)
    for p in range(len(text)):
        rest = text[p:]
        if any(len(rest) < len(f) and f.startswith(rest) for f in forms):
            if len(rest) >= _MIN_CUT:
                spans.append((p, len(text)))
            break
    return _masked(text, spans)


def may_begin(text: str, forms: list[str]) -> bool:
    """Whether some suffix of ``text`` is a proper prefix of a form (a token must be held)."""
    return any(f.startswith(text[p:]) and len(text) - p < len(f) for p in range(len(text)) for f in forms)


secrets_st = st.lists(st.text(ALPHABET, min_size=2, max_size=8), min_size=1, max_size=4)


@st.composite
def case(draw: st.DrawFn) -> tuple[list[str], str, list[str]]:
    """Secrets, a text made of secrets, their prefixes and filler, and a tokenisation of it."""
    secrets = draw(secrets_st)
    parts = draw(
        st.lists(
            st.one_of(
                st.sampled_from(secrets),
                st.sampled_from(secrets).flatmap(lambda s: st.integers(1, len(s)).map(lambda n: s[:n])),
                st.text(ALPHABET, max_size=4),
            ),
            max_size=12,
        )
    )
    text = "".join(parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=len(text) + 3)))
    bounds = [0, *cuts, len(text)]
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]  # empty pieces too
    return secrets, text, pieces


def stream(hb: Holdback, records: list[TokenRecord], batches: list[int]) -> list[TokenRecord]:
    """Push ``records`` in batches (events) of the given sizes, then flush."""
    out: list[TokenRecord] = []
    i = 0
    for size in batches:
        out += hb.push(records[i : i + size])
        i += size
    out += hb.push(records[i:])
    return out + hb.flush()


@settings(max_examples=400, deadline=None)
@given(case(), st.lists(st.integers(0, 4), max_size=30))
@example((["abcabd"], "abcabcabd", list("abcabcabd")), [])
@example((["abcabd"], "xxabcabcabdyy", ["xxab", "cabca", "bdyy"]), [1, 1])
@example((["abcdefgh", "abcx"], "zabcdefghabcx", list("zabcdefghabcx")), [])
@example((["abcdefgh"], "abcdefghabcdefgh", ["abcdefgh", "abcdefgh"]), [])
@example((["ééé😀"], "aééé😀", ["a", "é", "éé", "😀"]), [])
@example((["abcd"], "xabcd", ["x", "abc", "d"]), [])  # the secret at the very end
@example((["abcdef"], "xabcde", ["xab", "cde"]), [])  # cut off by the end: its prefix goes too
def test_any_tokenisation_redacts_the_text_and_keeps_every_token(
    c: tuple[list[str], str, list[str]], batches: list[int]
) -> None:
    secrets, text, pieces = c
    hb = Holdback(secrets, limit=10_000)
    records = [TokenRecord(p, -float(i) / 7, token_id=i) for i, p in enumerate(pieces)]
    out = stream(hb, records, batches)
    assert [r.token_id for r in out] == list(range(len(records)))  # none lost, none reordered
    assert [r.logprob for r in out] == [r.logprob for r in records]
    joined = "".join(r.text for r in out)
    assert joined == reference(text, secrets) == hb.redact(text)
    assert not any(s in joined for s in secrets)
    for r in out:
        assert not any(s in r.text for s in secrets)
    assert hb.held == 0


@settings(max_examples=300, deadline=None)
@given(case())
def test_a_token_is_held_only_while_the_text_may_begin_a_secret(c: tuple[list[str], str, list[str]]) -> None:
    secrets, _, pieces = c
    hb = Holdback(secrets, limit=10_000)
    seen = ""
    for i, piece in enumerate(pieces):
        hb.push([TokenRecord(piece, None, token_id=i)])
        seen += piece
        if not may_begin(seen, secrets):
            assert hb.held == 0, (seen, secrets)
        else:
            assert hb.held > 0


def merged_spans(text: str, forms: list[str]) -> list[tuple[int, int]]:
    """The runs :func:`reference` redacts in ``text``, overlapping or touching ones merged."""
    spans = []
    for form in forms:
        at = text.find(form)
        while at != -1:
            spans.append((at, at + len(form)))
            at = text.find(form, at + 1)
    for p in range(len(text)):
        rest = text[p:]
        if any(len(rest) < len(f) and f.startswith(rest) for f in forms):
            if len(rest) >= _MIN_CUT:
                spans.append((p, len(text)))
            break
    merged: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def render_views(text: str, runs: list[tuple[int, int]]) -> str:
    """Characters any run covers dropped; one marker per dropped stretch in which a run begins."""
    out, i = [], 0
    while i < len(text):
        if not any(a <= i < b for a, b in runs):
            out.append(text[i])
            i += 1
            continue
        j = i
        while j < len(text) and any(a <= j < b for a, b in runs):
            j += 1
        if any(i <= a < j for a, _ in runs):
            out.append(REDACTED)
        i = j
    return "".join(out)


def expected(records: list[TokenRecord], forms: list[str]) -> list[str]:
    """Each record's text as the whole-text oracle redacts one channel: the plain view (ordinary
    tokens) and, when there is a special token, the full view (every token), each by
    :func:`merged_spans` on its whole text; a character goes when a run of either covers it."""
    plain = merged_spans("".join(r.text for r in records if r.special is not True), forms)
    full = merged_spans("".join(r.text for r in records), forms) if any(r.special for r in records) else []
    out, p, f = [], 0, 0
    for r in records:
        n = len(r.text)
        runs = []
        if r.special is not True:
            runs += [(a - p, b - p) for a, b in plain if a < p + n and b > p]
            p += n
        runs += [(a - f, b - f) for a, b in full if a < f + n and b > f]
        f += n
        out.append(render_views(r.text, runs) if runs else r.text)
    return out


def assert_redacted(out: list[TokenRecord], records: list[TokenRecord], forms: list[str]) -> None:
    """Every record once, in order, logprobs kept; per channel, each record as :func:`expected`
    says, and no form in either view's text nor in any one token."""
    assert [r.token_id for r in out] == [r.token_id for r in records]
    assert [r.logprob for r in out] == [r.logprob for r in records]
    assert [r.special for r in out if r.special is True] == [r.special for r in records if r.special is True]
    for channel in {r.channel for r in records}:
        mine = [r for r in records if r.channel == channel]
        got = [r for r in out if r.channel == channel]
        assert [r.text for r in got] == expected(mine, forms)
        for view in ("".join(r.text for r in got), "".join(r.text for r in got if r.special is not True)):
            assert not any(form in view for form in forms), view
    for r in out:
        assert not any(form in r.text for form in forms)


KEY = "tw-provider-key-0123456789abcdefXYZ"
KEY_PIECES = [KEY[i : i + 5] for i in range(0, 35, 5)]  # the reviewer's 7 special pieces


@settings(max_examples=400, deadline=None)
@given(case(), st.lists(st.booleans(), max_size=40), st.lists(st.integers(0, 4), max_size=30))
@example((["abcd"], "xabcd", ["x", "ab", "cd"]), [False, True, True], [])  # the secret all special
@example((["abcd"], "abcd", ["ab", "cd"]), [False, True], [])  # an ordinary prefix, a special rest
@example((["abcd"], "abcd", ["ab", "cd"]), [True, False], [1])
@example(([KEY], "Your key is " + KEY + ".", ["Your key is ", *KEY_PIECES, "."]), [False, *[True] * 7], [])
@example((["sk-live-0123456789"], "sk-live-0123456789", ["sk-live-01", "23456789"]), [False, True], [])
def test_any_tokenisation_with_any_tokens_marked_special_is_redacted_in_both_views(
    c: tuple[list[str], str, list[str]], marks: list[bool], batches: list[int]
) -> None:
    """Finding 1 as a class: the upstream picks both where the text is cut and which tokens it
    calls special; whether a reader shows special tokens or not, no secret shows."""
    secrets, _, pieces = c
    hb = Holdback(secrets, limit=10_000)
    records = [
        TokenRecord(p, -float(i) / 7, token_id=i, special=True if i < len(marks) and marks[i] else None)
        for i, p in enumerate(pieces)
    ]
    out = stream(hb, records, batches)
    assert_redacted(out, records, secrets)
    assert hb.held == 0


@settings(max_examples=200, deadline=None)
@given(case(), case(), st.randoms(use_true_random=False))
def test_channels_and_control_tokens_are_redacted_apart_and_kept_in_order(
    a: tuple[list[str], str, list[str]], b: tuple[list[str], str, list[str]], rnd: object
) -> None:
    import random

    assert isinstance(rnd, random.Random)
    secrets = a[0] + b[0]
    content = [TokenRecord(p, -0.5, channel="content") for p in a[2]]
    reasoning = [TokenRecord(p, -0.25, channel="reasoning") for p in b[2]]
    control = [TokenRecord(s, None, special=True) for s in secrets[:2]]
    merged: list[TokenRecord] = []
    queues = [content, reasoning, control]
    while any(queues):
        q = rnd.choice([q for q in queues if q])
        merged.append(q.pop(0))
    records = [
        TokenRecord(r.text, r.logprob, token_id=i, special=r.special, channel=r.channel)
        for i, r in enumerate(merged)
    ]
    hb = Holdback(secrets, limit=10_000)
    out = stream(hb, records, [rnd.randint(0, 3) for _ in range(len(records))])
    assert_redacted(out, records, secrets)
    if not any(r.special for r in records):  # no special token: each channel exactly as before
        for channel, source in (("content", a[1]), ("reasoning", b[1])):
            assert "".join(r.text for r in out if r.channel == channel) == reference(source, secrets)


def test_the_covering_tokens_carry_prefix_marker_empty_and_suffix() -> None:
    key = "sk-test-0123456789abcdef"
    pieces = ["Your key is ", "s", "k-", "test-0123", "456789abc", "def", ". Done"]
    hb = Holdback([key], limit=100)
    records = [TokenRecord(p, -0.1, bytes=p.encode()) for p in pieces]
    out = stream(hb, records, [1] * len(records))
    assert [r.text for r in out] == ["Your key is ", REDACTED, "", "", "", "", ". Done"]
    assert [r.logprob for r in out] == [-0.1] * len(pieces)
    changed = out[1:6]
    assert all(r.bytes is None and r.special is False for r in changed)
    assert out[0] is records[0] and out[6] is records[6]  # untouched records pass as they are


def test_emptied_tokens_stay_scored_so_confidence_is_unchanged() -> None:
    key = "sk-test-0123456789abcdef"
    pieces = ["Key: ", *key, " ok"]
    records = [TokenRecord(p, -0.05 * (i % 5), bytes=p.encode()) for i, p in enumerate(pieces)]
    plain, redacted = ConfidenceTracker(0.5), ConfidenceTracker(0.5)
    for r in records:
        plain.add(r.text, r.logprob, special=r.special, raw_bytes=r.bytes)
    hb = Holdback([key], limit=100)
    out = stream(hb, records, [1] * len(records))
    scores = [redacted.add(r.text, r.logprob, special=r.special, raw_bytes=r.bytes) for r in out]
    assert redacted.text == f"Key: {REDACTED} ok"
    assert redacted.confidence == plain.confidence and redacted.finish().n_scored == plain.finish().n_scored
    for s, r in zip(scores, out, strict=True):  # offsets are those of the redacted text
        assert redacted.text[s.char_start : s.char_end] == r.text


def test_top_candidates_follow_the_chosen_token_and_lose_whole_secrets() -> None:
    key = "sk-test-0123456789abcdef"
    top = [Candidate(key, -0.1), Candidate("sk", -2.0)]
    hb = Holdback([key], limit=100)
    out = hb.push([TokenRecord(key, -0.1, top=top)]) + hb.flush()
    assert out[0].text == REDACTED and out[0].top is not None
    assert [c.token for c in out[0].top] == [REDACTED, "sk"]
    alt = [Candidate("hello", -0.1), Candidate(f"x{key}", -3.0)]
    out = hb.push([TokenRecord("hello", -0.1, top=alt)])
    assert out[0].text == "hello" and out[0].top is not None and key not in out[0].top[1].token


def test_a_pile_of_empty_tokens_behind_a_possible_secret_is_bounded() -> None:
    hb = Holdback(["sk-test-0123"], limit=10)
    hb.push([TokenRecord("sk-te", None)])
    with pytest.raises(UpstreamError) as raised:
        hb.push([TokenRecord("", None)] * 11)
    assert raised.value.code == "upstream_too_many_tokens"


def test_no_secret_means_no_holdback() -> None:
    assert holdback_for(Redactor(), limit=10) is None
    hb = holdback_for(Redactor(["sk-test-0123"]), limit=10)
    assert hb is not None and hb.redact("a sk-test-0123 b") == f"a {REDACTED} b"


@settings(max_examples=200, deadline=None)
@given(case())
def test_the_whole_text_is_redacted_as_the_redactor_does_for_known_secrets(
    c: tuple[list[str], str, list[str]],
) -> None:
    # Over this alphabet no credential shape and no clip marker occurs: the Redactor's result is
    # that of the known secrets alone, and the holdback's must equal it.
    secrets, text, _ = c
    secrets = [s * 4 for s in secrets]  # the Redactor refuses secrets under 8 characters
    text = text.replace(secrets[0][:2], secrets[0])
    redactor = Redactor(secrets)
    hb = holdback_for(redactor, limit=10)
    assert hb is not None
    assert hb.redact(text) == redactor.redact(text)
