"""Budgets in money (``cost_quota_usd`` rules): what a request costs, for the limits policy to count.

A budget is counted like a token quota, in integer micro-dollars: admission reserves the estimate's price (the
prompt estimate at the input price, the rest of the estimate, the max completion, at the output price), and
settlement replaces it with the price of the actual tokens (cached prompt tokens at the cached-input price). The
price is the model's in the price table of the backend that answered (a failover answer from a dearer model costs
that model's price); admission reserves at the dearest model among the backends that serve the deployment, so it
never underestimates. A deployment one of whose models has no price cannot be used under a budget (403
``budget_unpriced_model``), never counted as free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from ..catalogue import PoolTable
from ..context import RequestContext, TokenUsage, UsageSource
from ..errors import BudgetExceeded, PermissionDenied
from ..limits.rules import MICRO_USD_PER_USD, Limit
from ..providers.client import maybe_billed
from ..usage.prices import Price, PriceTable

REMAINING_HEADER = "x-aigw-budget-remaining-usd"


@dataclass(slots=True, frozen=True)
class Pricing:
    """One request's prices under a budget: each serving backend's model's, and the dearest for its estimate,
    which admission reserves at and a try on a backend without a price of its own is charged at."""

    by_backend: Mapping[str, Price]
    dearest: Price

    @classmethod
    def flat(cls, price: Price) -> Pricing:
        return cls({}, price)

    def of(self, backend: str | None) -> Price:
        return self.by_backend.get(backend, self.dearest) if backend is not None else self.dearest


class DeploymentPrices:
    """The prices of the models behind each gateway deployment, by the backend that serves it."""

    def __init__(self, pools: PoolTable, prices: PriceTable) -> None:
        self._pools = pools
        self._prices = prices

    def unpriced_model(self, deployment: str) -> str | None:
        """A model behind ``deployment`` without a price (None: all are priced)."""
        for target in self._pools.targets(deployment):
            if self._prices.price_of(target.model) is None:
                return target.model
        return None if self._pools.targets(deployment) else deployment

    def pricing(self, deployment: str, tokens: TokenUsage) -> Pricing | None:
        """The prices of ``deployment``'s models (None if one has none), the dearest for ``tokens``'s estimate."""
        by_backend: dict[str, Price] = {}
        for target in self._pools.targets(deployment):
            price = self._prices.price_of(target.model)
            if price is None:
                return None
            by_backend.setdefault(target.backend.name, price)
        if not by_backend:
            return None
        dearest = max(by_backend.values(), key=lambda price: estimate_micro_usd(price, tokens))
        return Pricing(by_backend, dearest)

    def unpriced_deployments(self) -> list[str]:
        """The deployments named in config one of whose models has no price."""
        return [d for d in self._pools.named_deployments() if self.unpriced_model(d) is not None]


def estimate_micro_usd(price: Price, tokens: TokenUsage) -> int:
    """What admission reserves: the prompt estimate as input, the rest of the token estimate as output."""
    return price.cost_micro_usd(tokens.prompt_estimate, tokens.estimate - tokens.prompt_estimate)


def billed_micro_usd(pricing: Pricing | None, ctx: RequestContext) -> int:
    """The estimate's price (at the price of the try's backend) once for each try that reached a backend and then
    timed out or was cut (Azure may bill it); 0 without a price (no budget applies)."""
    if pricing is None:
        return 0
    return sum(
        estimate_micro_usd(pricing.of(attempt.backend), ctx.tokens) for attempt in ctx.attempts if attempt.maybe_billed
    )


def answer_micro_usd(pricing: Pricing | None, ctx: RequestContext, status: int) -> int:
    """What a complete answer costs at the price of the backend that answered, cut tries included: nothing for a
    refusal, its usage's price, or the estimate's if it had none; 0 without a price."""
    if pricing is None:
        return 0
    price = pricing.of(ctx.backend)
    tokens = ctx.tokens
    if status >= 400:
        answer = 0
    elif tokens.actual_total is None:
        answer = estimate_micro_usd(price, tokens)
    else:
        answer = _actual_micro_usd(price, tokens)
    return answer + billed_micro_usd(pricing, ctx)


def stream_micro_usd(pricing: Pricing | None, ctx: RequestContext, error: BaseException | None) -> int:
    """What a stream costs, cut tries included: its usage's price, or the estimate's if none came; at least the
    estimate's if the backend cut it and the usage was only counted from what passed (it may have generated, and
    bill, more); 0 without a price."""
    if pricing is None:
        return 0
    price = pricing.of(ctx.backend)
    tokens = ctx.tokens
    if tokens.actual_total is None:
        stream = estimate_micro_usd(price, tokens)
    else:
        stream = _actual_micro_usd(price, tokens)
        if error is not None and maybe_billed(error) and tokens.source is not UsageSource.BACKEND:
            stream = max(stream, estimate_micro_usd(price, tokens))
    return stream + billed_micro_usd(pricing, ctx)


def _actual_micro_usd(price: Price, tokens: TokenUsage) -> int:
    return price.cost_micro_usd(tokens.prompt or 0, tokens.completion or 0, tokens.cached_prompt)


def usd(micro_usd: float) -> str:
    """Micro-dollars as a USD decimal string with 6 places, e.g. ``0.004213``."""
    return f"{Decimal(int(micro_usd)) / MICRO_USD_PER_USD:.6f}"


def remaining_header(limit: Limit, used_micro_usd: float) -> dict[str, str]:
    return {REMAINING_HEADER: usd(max(0, limit.tokens - used_micro_usd))}


def budget_refusal(limit: Limit, used: int, need: int, now_s: float, end_s: int, status: int) -> BudgetExceeded:
    """The period's budget cannot pay for this request (``used`` before it, ``need`` its estimate's price)."""
    wait_s = max(1, math.ceil(end_s - now_s))
    renews = datetime.fromtimestamp(end_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    remaining = remaining_header(limit, used)
    return BudgetExceeded(
        f"Budget exhausted: {limit.label}. ${remaining[REMAINING_HEADER]} remains and this request may cost up to "
        f"${usd(need)}. The budget renews at {renews} (UTC), in {wait_s} seconds.",
        status=status,
        code="budget_exceeded",
        headers={"retry-after": str(wait_s), "x-should-retry": "false", **remaining},
        rule=limit.rule.name,
    )


def too_costly(limit: Limit, need: int, status: int) -> BudgetExceeded:
    """This request alone may cost more than the whole budget: no wait makes it fit."""
    return BudgetExceeded(
        f"This request may cost up to ${usd(need)} (prompt plus max completion at its model's prices), more than "
        f"{limit.label} allows at all; shorten the prompt or lower max_tokens.",
        status=status,
        code="cost_exceeds_budget",
        headers={"x-should-retry": "false"},  # no remaining amount: the counter is not read for this
        rule=limit.rule.name,
    )


def unpriced(limit: Limit, deployment: str, model: str) -> PermissionDenied:
    """A deployment without a price under a budget: refused, never counted as free. Only the operator can fix it."""
    return PermissionDenied(
        f"The deployment '{deployment}' (model '{model}') has no price, so it cannot be used under {limit.label}. "
        f"The gateway's operator must add a price for '{model}' (usage.prices in the gateway config).",
        code="budget_unpriced_model",
        headers={"x-should-retry": "false"},
    )
