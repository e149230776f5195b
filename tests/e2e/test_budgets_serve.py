"""A budget in money through `aigw serve`, with the official openai SDK: a tenant with $0.01 a month on gpt-4o-mini
is admitted several times, then refused with when the month renews; what it spent never passes the budget."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import openai
from openai import AzureOpenAI

from gateway_core.limits.windows import quota_period
from gateway_core.storage.factory import counter_store
from gateway_core.usage.prices import load_prices
from tests.servers import CLIENT_KEY, GATEWAY_ENV, gateway_config, run_aigw, write_yaml

BUDGET_MICRO_USD = 10_000  # $0.01
MINI = load_prices().prices["gpt-4o-mini-2024-07-18"]
PROMPT = "word " * 4000  # some 600 micro-dollars a request: the cent pays for about 16


async def _spent(url: str, window: int) -> int:
    counters = counter_store(url)
    await counters.start()
    try:
        return await counters.get("cost:contoso-monthly:contoso", window)
    finally:
        await counters.close()


def test_a_tenant_with_a_cent_a_month_is_admitted_then_refused_until_the_month_renews(
    sim_url: str, tmp_path: Path
) -> None:
    counters = f"sqlite:///{tmp_path}/counters.db"
    rule = {"name": "contoso-monthly", "key": "tenant", "cost_quota_usd": "0.01", "quota_period": "monthly"}
    config = gateway_config(sim_url, limits={"rules": [rule]}, stores={"counters": counters, "health": "memory://"})
    path = write_yaml(tmp_path / "gateway.yaml", config)
    costs: list[int] = []
    with run_aigw(["serve", "--config", str(path)], env=GATEWAY_ENV) as gateway:
        client = AzureOpenAI(azure_endpoint=gateway.url, api_key=CLIENT_KEY, api_version="2024-10-21", max_retries=0)
        refusal: openai.PermissionDeniedError | None = None
        period = quota_period(time.time(), "monthly")
        while refusal is None and len(costs) < 100:
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}], max_tokens=8
                )
            except openai.PermissionDeniedError as exc:
                refusal = exc
                break
            usage = raw.parse().usage
            assert usage is not None
            costs.append(MINI.cost_micro_usd(usage.prompt_tokens, usage.completion_tokens))
            assert Decimal(raw.headers["x-aigw-budget-remaining-usd"]) < Decimal("0.01")
    assert len(costs) >= 5, "several requests fit in a cent"
    assert refusal is not None, "".join(gateway.output)
    assert refusal.status_code == 403 and refusal.code == "budget_exceeded"
    assert refusal.response.headers["x-should-retry"] == "false"
    remaining = Decimal(refusal.response.headers["x-aigw-budget-remaining-usd"])
    renews = datetime.fromtimestamp(period[1], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert f"renews at {renews}" in refusal.message
    assert 0 < int(refusal.response.headers["retry-after"]) <= period[1] - period[0]
    spent = asyncio.run(_spent(counters, period[0]))
    assert spent == sum(costs) <= BUDGET_MICRO_USD
    assert 0 <= remaining <= Decimal(BUDGET_MICRO_USD - spent) / 1_000_000  # less if a settlement was in flight
