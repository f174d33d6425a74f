"""The simulator's pure token generator: determinism, lengths, logprobs, UTF-8 and top-k lists."""

from __future__ import annotations

import itertools
import math
import os
import random
import subprocess
import sys

import pytest

from worker.sim.generate import (
    BYTE_ID_BASE,
    EOS_ID,
    SimToken,
    TokenSource,
    bf16,
    estimate_tokens,
    filler_token,
    generate,
    stream_seed,
    top_tokens,
)


def _text(tokens: list[SimToken]) -> str:
    return "".join(t.text for t in tokens if not t.special)


def test_same_inputs_give_the_same_tokens() -> None:
    first = list(generate(7, "Tell me a story", 300, model="m", request_seed=3))
    second = list(generate(7, "Tell me a story", 300, model="m", request_seed=3))
    assert first == second


@pytest.mark.parametrize(
    ("seed", "prompt", "model", "request_seed"),
    [
        (8, "Tell me a story", "m", 3),
        (7, "Tell me another story", "m", 3),
        (7, "Tell me a story", "other", 3),
        (7, "Tell me a story", "m", 4),
        (7, "Tell me a story", "m", None),
    ],
)
def test_each_input_changes_the_tokens(seed: int, prompt: str, model: str, request_seed: int | None) -> None:
    base = [t.text for t in generate(7, "Tell me a story", 100, model="m", request_seed=3)]
    other = [t.text for t in generate(seed, prompt, 100, model=model, request_seed=request_seed)]
    assert other != base


def test_stream_seed_is_a_stable_hash() -> None:
    # hashlib, not Python's salted hash(): this value never changes between runs or machines.
    assert stream_seed(0, "m", "p") == stream_seed(0, "m", "p")
    assert stream_seed(0, "m", "p") != stream_seed(0, "m", "p", 1)
    assert stream_seed(0, "tokenwire/sim-small", "hello") == 0xE960_3657_F6A3_F4DF


def test_tokens_do_not_depend_on_the_process_hash_seed() -> None:
    code = (
        "from worker.sim.generate import generate; "
        "print(repr([(t.id, t.text, t.logprob) for t in generate(1, 'hi', 200)]))"
    )
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        outputs.add(done.stdout)
    assert len(outputs) == 1


@pytest.mark.parametrize("n", [0, 1, 17, 500])
def test_generate_gives_exactly_n_content_tokens(n: int) -> None:
    tokens = list(generate(0, "p", n))
    assert len(tokens) == n
    assert not any(t.special for t in tokens)


def test_logprobs_are_bf16_values_in_range() -> None:
    tokens = list(generate(0, "p", 2000))
    for token in tokens:
        assert -4.0 <= token.logprob < 0.0
        mantissa, _ = math.frexp(token.logprob)
        assert (mantissa * 256).is_integer()  # at most 8 significant bits


def test_confident_and_uncertain_spans_both_occur() -> None:
    tokens = list(generate(0, "p", 2000))
    confident = [t for t in tokens if t.logprob >= -0.05]
    uncertain = [t for t in tokens if t.logprob <= -1.0]
    assert len(confident) > len(tokens) // 2
    assert len(uncertain) > len(tokens) // 20
    digits = [t for t in tokens if t.text.strip().isdigit()]
    assert digits
    assert all(t.logprob <= -1.0 for t in digits)


def test_text_is_english_ish_with_multibyte_utf8() -> None:
    text = _text(list(generate(0, "p", 3000)))
    assert text.startswith(" ")
    assert "." in text
    assert "," in text
    assert any(ch.isdigit() for ch in text)
    assert any(not ch.isascii() for ch in text)
    assert any(len(ch.encode()) == 4 for ch in text)  # an emoji
    text.encode("utf-8")  # valid: no lone surrogates


def test_raw_bytes_rebuild_the_text() -> None:
    tokens = list(generate(3, "p", 3000))
    while tokens[-1].text == "":  # cut at a whole character
        tokens.pop()
    assert b"".join(t.raw for t in tokens) == _text(tokens).encode("utf-8")


def test_some_multibyte_characters_are_split_into_byte_tokens() -> None:
    tokens = list(generate(0, "p", 5000))
    empty = [t for t in tokens if t.text == ""]
    assert empty  # rare, but present in a long stream
    assert all(BYTE_ID_BASE <= t.id < BYTE_ID_BASE + 256 for t in empty)
    assert all(len(t.raw) == 1 for t in empty)


def test_forced_split_changes_tokens_but_not_text() -> None:
    plain = list(generate(5, "p", 400))
    forced = list(generate(5, "p", 800, force_utf8_split=True))
    plain_text, forced_text = _text(plain), _text(forced)
    assert forced_text.startswith(plain_text)
    multibyte = [t for t in forced if not t.text.isascii()]
    assert multibyte
    for token in multibyte:  # every multi-byte character arrives as byte tokens
        assert BYTE_ID_BASE <= token.id < BYTE_ID_BASE + 256
        assert len(token.raw) == 1
    assert sum(1 for t in forced if t.text == "") >= len(multibyte)


def _events(n: int, *, eos: bool, stop: tuple[str, ...] = ()) -> list[tuple[SimToken, str | None]]:
    return list(TokenSource(11).events(n, eos=eos, stop=stop))


def test_events_end_with_eos() -> None:
    events = _events(5, eos=True)
    assert len(events) == 6
    assert [reason for _, reason in events] == [None] * 5 + ["eos_token"]
    last = events[-1][0]
    assert last.special
    assert last.id == EOS_ID
    assert last.text == "</s>"
    assert -0.06 < last.logprob < 0


def test_events_end_at_the_length_limit() -> None:
    events = _events(5, eos=False)
    assert len(events) == 5
    assert events[-1][1] == "length"
    assert not events[-1][0].special


def test_events_stop_at_a_stop_sequence() -> None:
    text = "".join(t.text for t, _ in _events(40, eos=False))
    stop = text[10:14]
    events = _events(40, eos=True, stop=("never there", stop))
    assert events[-1][1] == "stop_sequence"
    produced = "".join(t.text for t, _ in events)
    assert stop in produced
    assert stop not in produced[: -len(events[-1][0].text) or None]


def test_alternatives_do_not_change_the_sequence() -> None:
    plain = list(itertools.islice(TokenSource(9), 200))
    source = TokenSource(9)
    with_top = []
    for token in itertools.islice(source, 200):
        source.alternatives(token, 5)
        with_top.append(token)
    assert plain == with_top


@pytest.mark.parametrize("n", [1, 2, 5, 20])
def test_top_tokens_are_consistent_with_the_chosen_token(n: int) -> None:
    rng = random.Random(1)
    source = TokenSource(4)
    outside = 0
    for token in itertools.islice(source, 1500):
        top = top_tokens(token, n, rng)
        assert len(top) == n
        logprobs = [t.logprob for t in top]
        assert logprobs == sorted(logprobs, reverse=True)
        assert len({t.id for t in top}) == n
        assert sum(math.exp(lp) for lp in logprobs) < 1.0
        chosen = [t for t in top if t.id == token.id]
        if chosen:
            assert chosen == [token]  # same logprob
        else:
            outside += 1
            assert all(lp >= token.logprob for lp in logprobs)
        if token.logprob > math.log(0.5):
            assert top[0] == token
    if n <= 5:
        assert outside > 0  # unlikely tokens sometimes fall outside the list


def test_top_tokens_zero_is_empty() -> None:
    assert top_tokens(SimToken(5, "x", -1.0), 0, random.Random(0)) == []


def test_bf16_rounding() -> None:
    assert bf16(-2.6543) == -2.65625
    assert bf16(0.0) == 0.0
    assert bf16(-0.39575195) == -0.396484375


def test_filler_token_and_prompt_estimate() -> None:
    big = filler_token(100_000)
    assert len(big.text) == 100_000
    assert big.raw == big.text.encode()
    assert estimate_tokens("") == 0
    assert estimate_tokens("four") == 1
    assert estimate_tokens("a" * 41) == 11


# --- Chinese and Japanese, known logprobs (issue 13 §1) ------------------------------------------


@pytest.mark.parametrize(("lang", "lo", "hi"), [("zh", "\u4e00", "\u9fff"), ("ja", "\u3040", "\u30ff")])
def test_chinese_and_japanese_text_with_split_characters(lang: str, lo: str, hi: str) -> None:
    tokens = list(generate(7, "hello", 400, model="m", lang=lang))
    text = _text(tokens)
    assert sum(lo <= ch <= hi for ch in text) > 50
    assert all(not t.special for t in tokens)
    empty = [t for t in tokens if t.text == ""]
    assert len(empty) > 40  # about half the characters go as byte-fallback pieces
    assert all(len(t.raw) == 1 and t.raw[0] >= 0x80 for t in empty)
    raw = b"".join(t.raw for t in tokens)  # the stream may end inside a character
    assert raw.startswith(text.encode()) and len(raw) - len(text.encode()) < 4
    assert tokens == list(generate(7, "hello", 400, model="m", lang=lang))  # deterministic


def test_forced_split_sends_every_cjk_character_in_pieces() -> None:
    tokens = list(generate(7, "hello", 300, model="m", lang="zh", force_utf8_split=True))
    whole = [t for t in tokens if t.text and not t.text.isascii()]
    assert all(len(t.text) == 1 or t.raw == t.text.encode() for t in whole)
    for i, t in enumerate(tokens):
        if t.text and len(t.text) == 1 and len(t.text.encode()) == 3 and len(t.raw) == 1:
            assert [p.text for p in tokens[i - 2 : i]] == ["", ""]


def test_lang_does_not_change_english() -> None:
    assert list(generate(3, "p", 200, lang="en")) == list(generate(3, "p", 200))


def test_fixed_logprobs_and_a_low_run() -> None:
    plain = list(generate(7, "hello", 60, lang="zh", force_utf8_split=True))
    fixed = list(
        generate(
            7,
            "hello",
            60,
            lang="zh",
            force_utf8_split=True,
            fixed_logprob=-0.5,
            low_at=10,
            low_run=5,
            low_logprob=-2.0,
        )
    )
    assert [t.text for t in fixed] == [t.text for t in plain]  # the text does not depend on them
    for i, (t, p) in enumerate(zip(fixed, plain, strict=True)):
        if 10 <= i < 15:
            assert t.logprob == -2.0
        elif p.logprob == -(2.0**-12):  # a later byte of a split character keeps its own
            assert t.logprob == p.logprob
        else:
            assert t.logprob == -0.5


def test_unknown_lang_is_refused() -> None:
    with pytest.raises(ValueError, match="lang must be one of en, zh, ja"):
        TokenSource(1, lang="fr")
