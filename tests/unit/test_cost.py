"""worker/cost.py and worker/prices.py: prices, ledgers, allowances and bounded metric labels, with
exact values."""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.cost import MODEL_LABELS, Ledger, ModelLabels
from worker.prices import cost_of, price_for
from worker.settings import Price, Provider

P = Price(input=2.0, output=10.0)


def _add(ledger: Ledger, provider: Provider, model: str, i: int | None, o: int, *, esc: bool = False) -> None:
    ledger.add(
        attempt=1,
        model=model,
        provider_name="p",
        provider=provider,
        input_tokens=i,
        output_tokens=o,
        reported=i is not None,
        escalation=esc,
    )


def test_a_named_price_wins_over_the_star_and_no_price_is_none() -> None:
    provider = Provider(prices={"m": P, "*": Price(input=1.0, output=1.0)})
    assert price_for(provider, "m") == P
    assert price_for(provider, "other") == Price(input=1.0, output=1.0)
    assert price_for(Provider(prices={"m": P}), "other") is None


def test_cost_is_per_million_tokens() -> None:
    assert cost_of(P, 1_000_000, 0) == 2.0
    assert cost_of(P, 500, 100) == pytest.approx((500 * 2 + 100 * 10) / 1e6)
    assert cost_of(P, None, 100) == pytest.approx(0.001)


def test_totals_split_the_escalation_and_are_none_when_a_model_has_no_price() -> None:
    priced = Provider(prices={"*": P})
    ledger = Ledger()
    _add(ledger, priced, "cheap", 100, 10)
    _add(ledger, priced, "strong", 100, 20, esc=True)
    cost, esc = ledger.totals()
    assert cost == pytest.approx((100 * 2 + 10 * 10 + 100 * 2 + 20 * 10) / 1e6)
    assert esc == pytest.approx((100 * 2 + 20 * 10) / 1e6)
    _add(ledger, Provider(), "free", None, 3)
    assert ledger.totals() == (None, None)
    assert ledger.attempts[-1].cost is None and ledger.attempts[-1].counted


def test_the_allowance_is_what_the_budget_leaves_after_spent_and_prompt() -> None:
    ledger = Ledger()
    _add(ledger, Provider(prices={"*": P}), "m", 0, 100)  # spent 0.001
    # 0.011 budget - 0.001 spent - 1000 prompt tokens * 2e-6 = 0.008 -> 800 tokens at 1e-5
    assert ledger.allowance(P, 0.011, 1000) == 800
    assert ledger.allowance(P, 0.002, 1000) == 0  # the prompt alone is over
    assert ledger.allowance(Price(input=0.0, output=0.0), 0.01, 10) == 2**62
    assert ledger.worst_case(P, 1000, 100) == pytest.approx(0.001 + 0.002 + 0.001)


@given(
    budget=st.floats(min_value=1e-9, max_value=1e3),
    spent_out=st.integers(min_value=0, max_value=10**6),
    prompt=st.integers(min_value=0, max_value=10**6),
    out_price=st.floats(min_value=1e-3, max_value=1e3),
)
def test_the_allowance_never_passes_the_budget(
    budget: float, spent_out: int, prompt: int, out_price: float
) -> None:
    price = Price(input=1.0, output=out_price)
    ledger = Ledger()
    _add(ledger, Provider(prices={"*": price}), "m", 0, spent_out)
    n = ledger.allowance(price, budget, prompt)
    if n > 0:
        assert ledger.spent + cost_of(price, prompt, n) <= budget * (1 + 1e-9)
        assert ledger.spent + cost_of(price, prompt, n + 1) > budget * (1 - 1e-9)


def test_model_labels_are_bounded() -> None:
    labels = ModelLabels()
    names = [labels(f"model-{n}") for n in range(MODEL_LABELS + 50)]
    assert names[:MODEL_LABELS] == [f"model-{n}" for n in range(MODEL_LABELS)]
    assert set(names[MODEL_LABELS:]) == {"other"}
    assert labels("model-3") == "model-3"  # a seen one keeps its label


@pytest.mark.parametrize(
    "bad", [{"input": -1.0, "output": 1.0}, {"input": 1.0}, {"input": math.inf, "output": 1}]
)
def test_a_bad_price_is_refused_by_name(bad: dict[str, float]) -> None:
    with pytest.raises(msgspec.ValidationError, match=r"prices|input|output"):
        msgspec.convert({"prices": {"m": bad}}, Provider)
