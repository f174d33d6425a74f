"""A model's price on a provider (its ``prices`` table in settings) and what tokens cost by it."""

from __future__ import annotations

from .settings import Price, Provider

__all__ = ["PER_MILLION", "cost_of", "price_for"]

PER_MILLION = 1_000_000.0


def price_for(provider: Provider, model: str) -> Price | None:
    """The model's price on ``provider`` (``"*"`` when the model is not named), or None."""
    prices = provider.prices
    return prices.get(model) or prices.get("*")


def cost_of(price: Price, input_tokens: int | None, output_tokens: int) -> float:
    return ((input_tokens or 0) * price.input + output_tokens * price.output) / PER_MILLION
