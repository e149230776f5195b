"""The limits section: rate limits, token quotas and USD budgets per counter key."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .base import Section, require_unique

COUNTER_KEYS = ("user", "tenant", "key", "ip", "deployment")
QuotaPeriod = Literal["hourly", "daily", "weekly", "monthly"]


class LimitRule(Section):
    """A limit per counter key: a tokens-per-minute rate, a token quota and/or a budget in USD per period."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    key: str  # user | tenant | key | ip | deployment | header:<name>
    tokens_per_minute: int | None = Field(default=None, ge=1)
    token_quota: int | None = Field(default=None, ge=1)
    # USD per quota_period, a hard cap on estimated-then-actual cost (counted in whole micro-dollars).
    cost_quota_usd: Decimal | None = None
    quota_period: QuotaPeriod | None = None  # of token_quota and cost_quota_usd both, when a rule sets both
    deployments: tuple[str, ...] | None = None  # applies only to these gateway deployments
    tenants: tuple[str, ...] | None = None  # applies only to callers in these tenants

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        if value in COUNTER_KEYS or (value.startswith("header:") and len(value) > len("header:")):
            return value.lower() if value.startswith("header:") else value
        raise ValueError(f"must be one of {', '.join(COUNTER_KEYS)} or header:<name>")

    @field_validator("cost_quota_usd", mode="before")
    @classmethod
    def _usd(cls, value: Any) -> Decimal | None:
        return None if value is None else budget_usd(value)

    @model_validator(mode="after")
    def _something_to_limit(self) -> LimitRule:
        quotas = self.token_quota is not None or self.cost_quota_usd is not None
        if self.tokens_per_minute is None and not quotas:
            raise ValueError("give tokens_per_minute, token_quota or cost_quota_usd (quotas with quota_period)")
        if quotas != (self.quota_period is not None):
            raise ValueError("token_quota and cost_quota_usd need quota_period, and quota_period needs one of them")
        return self


MAX_BUDGET_USD = Decimal(1_000_000_000)  # 10^15 micro-dollars: exact in every counter store, doubles included


def budget_usd(value: Any) -> Decimal:
    """A budget in USD: a string or an int, more than 0, in whole micro-dollars. Raises ``ValueError``."""
    # A float such as 0.01 has already lost exactness by the time it gets here (as with usage.prices).
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError('give USD as a string or a whole number, e.g. "5" or "0.01"')
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number of USD") from None
    if not amount.is_finite() or amount <= 0 or amount > MAX_BUDGET_USD:
        raise ValueError(f"must be more than 0 and at most {MAX_BUDGET_USD} USD")
    if amount != amount.quantize(Decimal("0.000001")):
        raise ValueError("budgets are counted in whole micro-dollars: at most 6 decimal places")
    return amount


class LimitsSettings(Section):
    rules: tuple[LimitRule, ...] = ()
    # Completion tokens assumed for admission when a request sets no max_tokens / max_completion_tokens.
    default_completion_tokens: int = Field(default=1024, ge=0)
    quota_exceeded_status: Literal[403, 429] = 403  # 403 as APIM's llm-token-limit answers
    on_store_error: Literal["fail_closed", "fail_open"] = "fail_closed"

    @model_validator(mode="after")
    def _unique(self) -> LimitsSettings:
        require_unique([r.name for r in self.rules], "rule")
        return self
