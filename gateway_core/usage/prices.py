"""The price table: USD per 1M tokens for input, cached input and output, per model; costs in micro-dollars.

A deployment's configured ``model`` maps to an entry by its exact name or an explicit alias, never by prefix
(``gpt-4o-mini`` is not ``gpt-4o``). USD per 1M tokens is micro-dollars per token, so a cost is an exact
Decimal sum, rounded once (half up) to whole micro-dollars. On the request path that sum is taken in integers
(the rates scaled by a power of ten when the table is loaded): Decimal arithmetic was ~3 us a call, and the
result is the same (tests/unit/test_prices.py compares the two).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

_BUILT_IN = Path(__file__).with_name("prices.json")
# Below this the Decimal sum (28 significant digits) is exact, so the integer one equals it.
_EXACT_LIMIT = 10**27
_MAX_PLACES = 18


class PriceError(ValueError):
    """A price table or override that cannot be used; the message names the model and field."""


@dataclass(slots=True, frozen=True)
class Price:
    """USD per 1M tokens (= micro-dollars per token). ``cached_input`` None: cached input costs the input price."""

    model: str
    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    # The rates times 10**places, exact integers (places: the most decimal places of the three), set on creation;
    # None for rates the integer sum does not take (negative, not finite, more than 18 places): Decimal then.
    _scaled: tuple[int, int, int] | None = field(init=False, repr=False, compare=False)
    _unit: int = field(init=False, repr=False, compare=False)  # 10**places

    def __post_init__(self) -> None:
        rates = (self.input, self.cached_input if self.cached_input is not None else self.input, self.output)
        scaled, unit = None, 1
        if all(rate.is_finite() and rate >= 0 for rate in rates):
            places = max(max(0, -int(rate.as_tuple().exponent)) for rate in rates)
            if places <= _MAX_PLACES:
                scaled, unit = (
                    (_times_unit(rates[0], places), _times_unit(rates[1], places), _times_unit(rates[2], places)),
                    10**places,
                )
        object.__setattr__(self, "_scaled", scaled)
        object.__setattr__(self, "_unit", unit)

    def cost_micro_usd(self, prompt: int, completion: int, cached_prompt: int = 0) -> int:
        """What ``prompt`` input tokens (``cached_prompt`` of them cached) and ``completion`` output tokens cost."""
        cached = min(max(cached_prompt, 0), prompt)
        if self._scaled is None or cached < 0 or completion < 0:
            return self._decimal_cost(prompt - cached, cached, completion)
        input_rate, cached_rate, output_rate = self._scaled
        scaled = (prompt - cached) * input_rate + cached * cached_rate + completion * output_rate
        if scaled >= _EXACT_LIMIT:
            return self._decimal_cost(prompt - cached, cached, completion)  # where Decimal itself rounds
        return (scaled + self._unit // 2) // self._unit  # half up; a unit of 1 leaves the sum as it is

    def _decimal_cost(self, uncached: int, cached: int, completion: int) -> int:
        cached_rate = self.input if self.cached_input is None else self.cached_input
        exact = uncached * self.input + cached * cached_rate + completion * self.output
        return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))

    def as_dict(self) -> dict[str, str | None]:
        cached = None if self.cached_input is None else str(self.cached_input)
        return {"input": str(self.input), "cached_input": cached, "output": str(self.output)}


def _times_unit(rate: Decimal, places: int) -> int:
    # From the digits, not rate * 10**places: Decimal arithmetic rounds past 28 significant digits.
    _, digits, exponent = rate.as_tuple()  # finite and not negative
    shift: int = 10 ** (int(exponent) + places)  # exponent >= -places: a whole power of ten
    return int("".join(map(str, digits))) * shift


@dataclass(slots=True, frozen=True)
class PriceTable:
    """Prices by exact model name, aliases resolved; with where they came from, for ``GET /usage/prices``."""

    prices: Mapping[str, Price]
    aliases: Mapping[str, str]  # alias -> model
    as_of: str
    source: str
    note: str

    def price_of(self, model: str | None) -> Price | None:
        """The price of ``model`` by exact name or alias; None if the table has no such entry."""
        if not model:
            return None
        return self.prices.get(self.aliases.get(model, model))

    def as_dict(self) -> dict[str, Any]:
        return {
            "currency": "USD",
            "unit": "per 1M tokens",
            "as_of": self.as_of,
            "source": self.source,
            "note": self.note,
            "models": {name: p.as_dict() for name, p in sorted(self.prices.items())},
            "aliases": dict(sorted(self.aliases.items())),
        }


def load_prices(overrides: Mapping[str, Mapping[str, Any]] | None = None) -> PriceTable:
    """The built-in table with ``overrides`` (config ``usage.prices``: model -> input/cached_input/output/aliases)
    laid over it; an override replaces the whole entry of its model. Raises ``PriceError``."""
    data = json.loads(_BUILT_IN.read_text(encoding="utf-8"))
    entries: dict[str, Mapping[str, Any]] = dict(data["models"])
    source, as_of = str(data["source"]), str(data["as_of"])
    if overrides:
        entries.update(overrides)
        source += "; overridden in the gateway config for: " + ", ".join(sorted(overrides))
    prices: dict[str, Price] = {}
    aliases: dict[str, str] = {}
    for model, entry in entries.items():
        prices[model] = _price(model, entry)
        for alias in entry.get("aliases") or ():
            if overrides and alias in overrides and alias != model:
                continue  # the config priced this name itself: its own entry wins over the built-in alias
            aliases[str(alias)] = model
    for alias, model in aliases.items():
        if alias in prices and alias != model:
            raise PriceError(f"{alias!r} is both a model and an alias of {model!r}")
    return PriceTable(prices, aliases, as_of, source, str(data["note"]))


def _price(model: str, entry: Mapping[str, Any]) -> Price:
    unknown = set(entry) - {"input", "cached_input", "output", "aliases"}
    if unknown:
        raise PriceError(f"{model}: unknown field {', '.join(sorted(unknown))}")
    cached = entry.get("cached_input")
    return Price(
        model,
        _usd(model, "input", entry.get("input")),
        _usd(model, "output", entry.get("output")),
        None if cached is None else _usd(model, "cached_input", cached),
    )


def _usd(model: str, field: str, value: Any) -> Decimal:
    # Strings or ints only: a float such as 0.075 has already lost exactness by the time it gets here.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PriceError(f'{model}.{field}: give USD per 1M tokens as a string, e.g. "2.50"')
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise PriceError(f"{model}.{field}: {value!r} is not a number") from None
    if not amount.is_finite() or amount < 0 or amount > 10_000:
        raise PriceError(f"{model}.{field}: must be from 0 to 10000 USD per 1M tokens")
    return amount
