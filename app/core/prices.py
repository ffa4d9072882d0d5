"""MODEL_PRICES: what a model's tokens cost, for GET /usage's `cost_usd` and the cost metric.

JSON, or a path to a JSON or YAML file (as MCP_SERVERS and AGENTS): a mapping of model name (or
fnmatch pattern, `claude-sonnet-*`) to its prices in USD per million tokens:

    {"claude-sonnet-5-5": {"input": 3, "output": 15, "cache_read": 0.3, "cache_creation": 3.75}}

`cache_read` and `cache_creation` default to `input`. An exact name wins over a pattern; patterns
are tried in the order given. A model without a price costs `null`, never a guess. A bad entry
stops start-up with one line naming the model and the field (exit 2).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.core.mcp_config import load_value, problem

PER = 1_000_000


class ModelPrice(BaseModel):
    """USD per million tokens of each kind."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_read: float | None = Field(default=None, ge=0)
    cache_creation: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _cache_defaults(self) -> ModelPrice:
        if self.cache_read is None:
            object.__setattr__(self, "cache_read", self.input)
        if self.cache_creation is None:
            object.__setattr__(self, "cache_creation", self.input)
        return self


@dataclass(frozen=True, slots=True)
class Tokens:
    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_creation: int = 0


@dataclass(frozen=True)
class PriceTable:
    prices: Mapping[str, ModelPrice]

    def of(self, model: str) -> ModelPrice | None:
        if (price := self.prices.get(model)) is not None:
            return price
        return next((p for name, p in self.prices.items() if "*" in name and fnmatchcase(model, name)), None)

    def cost(self, model: str, tokens: Tokens) -> float | None:
        """USD for these tokens of `model`; None when it has no price."""
        price = self.of(model)
        if price is None:
            return None
        assert price.cache_read is not None
        assert price.cache_creation is not None
        return (
            tokens.input * price.input
            + tokens.output * price.output
            + tokens.cache_read * price.cache_read
            + tokens.cache_creation * price.cache_creation
        ) / PER


def parse_prices(value: object) -> PriceTable:
    """MODEL_PRICES as a validated table; a ValueError names the first bad model and field."""
    if isinstance(value, PriceTable):
        return value
    if value is None or value == "":
        return PriceTable({})
    if isinstance(value, str):
        value = load_value(value)
    if not isinstance(value, Mapping):
        raise ValueError('must be {"<model>": {"input": ..., "output": ...}, ...}')
    prices: dict[str, ModelPrice] = {}
    for model, entry in value.items():
        if not isinstance(model, str) or not model.strip():
            raise ValueError("a model name must be a non-empty string")
        try:
            prices[model] = entry if isinstance(entry, ModelPrice) else ModelPrice.model_validate(entry)
        except ValidationError as exc:
            raise ValueError(f"model {model[:100]!r}: {problem(exc)}") from None
    return PriceTable(prices)
