"""The price table: exact names and aliases only, exact micro-dollar costs, overrides checked."""

from __future__ import annotations

import random
from decimal import ROUND_HALF_UP, Decimal

import pytest

from gateway_core.usage.prices import Price, PriceError, load_prices
from gateway_core.usage.record import SummaryKey, UsageRecord, summarise


def test_alias_and_exact_name_resolve_but_never_a_prefix() -> None:
    table = load_prices()
    assert table.price_of("gpt-4o") == table.price_of("gpt-4o-2024-11-20")
    mini = table.price_of("gpt-4o-mini")
    assert mini is not None and mini.model == "gpt-4o-mini-2024-07-18"
    assert mini != table.price_of("gpt-4o")
    assert table.price_of("gpt-4o-2024") is None
    assert table.price_of("gpt-4o-mini-2024-07-18-x") is None
    assert table.price_of(None) is None


def test_cost_is_exact_micro_dollars() -> None:
    mini = load_prices().price_of("gpt-4o-mini")
    assert mini is not None
    # 800 uncached x 0.15 + 200 cached x 0.075 + 500 out x 0.60 micro-dollars per token
    assert mini.cost_micro_usd(prompt=1000, completion=500, cached_prompt=200) == 120 + 15 + 300
    # Rounded once, half up: 3 tokens x 0.075 = 0.225 -> 0; 7 x 0.075 = 0.525 -> 1
    assert mini.cost_micro_usd(prompt=3, completion=0, cached_prompt=3) == 0
    assert mini.cost_micro_usd(prompt=7, completion=0, cached_prompt=7) == 1
    # Cached tokens beyond the prompt are capped at the prompt
    assert mini.cost_micro_usd(prompt=10, completion=0, cached_prompt=50) == 1


def _decimal_cost(price: Price, prompt: int, completion: int, cached_prompt: int) -> int:
    """The formula the integer sum replaced: exact Decimal, rounded once, half up."""
    cached = min(max(cached_prompt, 0), prompt)
    cached_rate = price.input if price.cached_input is None else price.cached_input
    exact = (prompt - cached) * price.input + cached * cached_rate + completion * price.output
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _random_rate(rng: random.Random) -> Decimal:
    places = rng.choice([0, 1, 2, 3, 4, 6, 9])
    return Decimal(rng.randrange(0, 10_000 * 10**places + 1)).scaleb(-places)


def test_cost_equals_the_decimal_formula_for_every_price_and_token_count() -> None:
    rng = random.Random(11)
    prices = list(load_prices().prices.values())
    # Rates whose costs land on .5 exactly (0.5 x odd, 0.25 x 2 mod 4, ...), trailing zeros, 28 digits, 0
    for text in ("0.5", "0.25", "0.125", "0.0005", "2.50", "1E+1", "0", "1234.567890123456789012345678"):
        prices.append(Price("edge", Decimal(text), Decimal(text), None))
        prices.append(Price("edge-cached", Decimal(text), Decimal("0.075"), Decimal(text)))
    prices += [
        Price("random", _random_rate(rng), _random_rate(rng), rng.choice([None, _random_rate(rng)])) for _ in range(300)
    ]
    counts = [0, 1, 2, 3, 4, 5, 7, 999, 1000, 1001, 2000, 10**6 + 1, 10**12 + 3, 10**24 + 7]
    for price in prices:
        cases = [(p, c, k) for p in counts for c in counts[:6] for k in (0, 1, p // 2, p)]
        cases += [(rng.randrange(10**7), rng.randrange(10**5), rng.randrange(10**7)) for _ in range(40)]
        cases += [(-5, 3, 0), (5, -3, 0), (-5, -3, -1), (10, 0, -4), (3, 0, 50)]  # careless counts: as before
        for prompt, completion, cached in cases:
            expected = _decimal_cost(price, prompt, completion, cached)
            assert price.cost_micro_usd(prompt, completion, cached) == expected, (price, prompt, completion, cached)


def test_no_cached_price_means_the_input_price() -> None:
    old = load_prices().price_of("gpt-4o-2024-05-13")
    assert old is not None and old.cached_input is None
    assert old.cost_micro_usd(prompt=100, completion=0, cached_prompt=100) == 500


def test_overrides_replace_the_entry_and_are_named_in_the_source() -> None:
    table = load_prices({"gpt-4o": {"input": "1", "output": "2"}, "my-model": {"input": "3", "output": "4"}})
    price = table.price_of("gpt-4o")
    assert price is not None and price.input == Decimal("1")  # the override, not the alias's target
    assert table.price_of("my-model") is not None
    assert "gpt-4o" in table.source and "my-model" in table.source


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"input": 0.075, "output": "1"}, "as a string"),
        ({"input": "abc", "output": "1"}, "not a number"),
        ({"input": "-1", "output": "1"}, "from 0 to 10000"),
        ({"input": "NaN", "output": "1"}, "from 0 to 10000"),
        ({"input": "1", "output": "1", "colour": "red"}, "unknown field colour"),
    ],
)
def test_bad_overrides_are_refused_with_the_field_named(entry: dict[str, object], message: str) -> None:
    with pytest.raises(PriceError, match=message):
        load_prices({"x": entry})


def _record(record_id: str, status: int, **fields: object) -> UsageRecord:
    return UsageRecord(
        record_id=record_id,
        time_s=float(record_id),
        request_id="r",
        tenant="t",
        user="u",
        key_id="k",
        method="POST",
        path="/p",
        status=status,
        model="m",
        deployment="d",
        **fields,  # type: ignore[arg-type]
    )


def test_summaries_count_unpriced_records_apart_from_free_ones() -> None:
    records = [
        _record("1", 200, prompt_tokens=5, cost_micro_usd=None),
        _record("2", 200, prompt_tokens=5, cost_micro_usd=7, cache="HIT", saved_tokens=5, saved_micro_usd=7),
        _record("3", 429),
    ]
    rows = summarise(records)
    totals = rows[SummaryKey("1970-01-01", "t", "u", "d", "m")]
    assert (totals.requests, totals.errors, totals.unpriced, totals.cost_micro_usd) == (3, 1, 1, 7)
    assert (totals.cache_hits, totals.saved_tokens, totals.saved_micro_usd) == (1, 5, 7)


def test_config_checks_price_overrides_at_load() -> None:
    from gateway_core.config import ConfigError, config_from_dict

    backend = {"name": "a", "url": "http://127.0.0.1:1", "deployments": [{"name": "d"}]}
    with pytest.raises(ConfigError, match=r"usage\.prices.*m\.input: give USD per 1M tokens as a string"):
        config_from_dict({"backends": [backend], "usage": {"prices": {"m": {"input": 1.5, "output": "1"}}}})
    config = config_from_dict({"backends": [backend], "usage": {"prices": {"m": {"input": "1.5", "output": "1"}}}})
    assert load_prices(config.usage.prices).price_of("m") is not None


def test_config_parses_prices_once_and_keeps_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    # The usage section's validator and the budget check each parsed the table (and read prices.json) again.
    from gateway_core.config import ConfigError, config_from_dict, load_config_text
    from gateway_core.usage import prices

    reads: list[str] = []
    built_in = prices._BUILT_IN

    class CountedFile:
        def read_text(self, encoding: str) -> str:
            reads.append(encoding)
            return built_in.read_text(encoding=encoding)

    monkeypatch.setattr(prices, "_BUILT_IN", CountedFile())
    backend = {"name": "a", "url": "http://127.0.0.1:1", "deployments": [{"name": "d", "model": "m"}]}
    rule = {"name": "r", "key": "user", "cost_quota_usd": "5", "quota_period": "daily", "deployments": ["d"]}
    config = config_from_dict(
        {"backends": [backend], "limits": {"rules": [rule]}, "usage": {"prices": {"m": {"input": "1", "output": "2"}}}}
    )
    assert len(reads) == 1
    price = config.usage.price_table.price_of("m")
    assert price is not None and price.cost_micro_usd(1, 1) == 3
    yaml_text = (
        "backends:\n  - name: a\n    url: http://127.0.0.1:1\n    deployments: [d]\nusage:\n  prices:\n    m: {}\n"
    )
    with pytest.raises(ConfigError, match=r"^invalid configuration:\n  f.yaml:7: usage\.prices: m\.input: give USD"):
        load_config_text(yaml_text, "f.yaml", env={})
