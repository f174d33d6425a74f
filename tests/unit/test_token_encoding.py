"""``encode_token`` (the hot path's token event, built positionally) gives exactly the bytes of
``encode_event(Token(...))`` with the same values, for any values, and takes every field of
``Token`` in its order (a field added to ``Token`` fails here until ``encode_token`` has it)."""

from __future__ import annotations

import inspect

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from worker.events import Token, TopkMetrics, TopLogprob, decode_event, encode_event, encode_token

floats = st.one_of(
    st.none(), st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0.0, -0.0, 1e-5, 1e16])
)
texts = st.text(max_size=12)
tops = st.one_of(
    st.none(),
    st.lists(st.builds(TopLogprob, token=texts, logprob=floats), max_size=4),
)
topks = st.one_of(
    st.none(),
    st.builds(
        TopkMetrics,
        margin=floats,
        chosen_rank=st.integers(1, 20),
        tail_mass=st.floats(0, 1),
        entropy_lb=st.floats(0, 10),
        entropy_lump=st.floats(0, 10),
        entropy_ub=floats,
        mean_entropy_lb=floats,
        max_entropy_lb=floats,
        n_not_top1=st.integers(0, 100),
    ),
)
fields = st.fixed_dictionaries(
    {
        "job_id": texts,
        "attempt": st.integers(1, 2**31),
        "index": st.integers(0, 10**9),
        "text": texts,
        "logprob": floats,
        "token_id": st.one_of(st.none(), st.integers(0, 2**53)),
        "special": st.booleans(),
        "top_logprobs": tops,
        "confidence": floats,
        "ewma_confidence": floats,
        "min_prob": floats,
        "low": st.booleans(),
        "char_start": st.integers(0, 10**9),
        "char_end": st.integers(0, 10**9),
        "topk": topks,
        "channel": st.sampled_from(["content", "reasoning"]),
        "candidate": st.one_of(st.just(msgspec.UNSET), st.integers(0, 7)),
    }
)


@given(fields)
def test_encode_token_is_the_token_event_byte_for_byte(values: dict[str, object]) -> None:
    expected = encode_event(Token(**values))  # type: ignore[arg-type]
    in_order = [values[name] for name in Token.__struct_fields__]
    assert encode_token(*in_order) == expected  # type: ignore[arg-type]
    assert decode_event(expected) == Token(**values)  # type: ignore[arg-type]


def test_encode_token_takes_every_field_of_token_in_order() -> None:
    assert tuple(inspect.signature(encode_token).parameters) == Token.__struct_fields__


def test_a_candidate_unset_is_absent_as_on_a_token() -> None:
    values = ("j", 1, 0, "hi", -0.5, None, False, None, 0.6, 0.6, 0.6, False, 0, 2, None, "content")
    without = encode_token(*values, msgspec.UNSET)
    assert b"candidate" not in without
    assert encode_token(*values, 2).endswith(b',"candidate":2}')
