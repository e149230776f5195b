"""Budgets in money (cost_quota_usd rules), in-process against the simulator: admission reserves the estimate's
price, settlement replaces it with the actual tokens' price, and what a tenant spends never passes its budget."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from aigw.demo import DEMO_KEY, DEMO_KEY_2, start_demo_backends
from aigw.serve import BackgroundServers
from gateway_core.app import Gateway
from gateway_core.catalogue import PoolTable
from gateway_core.clock import ManualClock
from gateway_core.config import ConfigError, StoreSettings, config_from_dict, sha256_hex
from gateway_core.context import Attempt, GatewayRequest, GatewayResponse, RequestContext, TokenUsage
from gateway_core.limits.windows import quota_period
from gateway_core.policies.budgets import DeploymentPrices, Pricing, answer_micro_usd, billed_micro_usd, usd
from gateway_core.simulator.app import SimulatorApp
from gateway_core.simulator.settings import Fault, SimConfig, SimDeployment
from gateway_core.tokens.usage import record_json_usage
from gateway_core.usage.prices import load_prices
from tests.inprocess import running
from tests.usage_sink import ListSink

ALICE = {"api-key": "alice-key"}
BOB = {"api-key": "bob-key"}  # alice's tenant, contoso
EVE = {"api-key": "eve-key"}  # another tenant, fabrikam
START = 1_795_000_040.0  # 2026-11-18T11:07:20Z: the month renews 2026-12-01T00:00:00Z
MONTH_START, MONTH_END = quota_period(START, "monthly")
MINI = load_prices().prices["gpt-4o-mini-2024-07-18"]  # gpt-4o-mini's entry (an alias of it)
# About 4,000 prompt tokens: some 600 micro-dollars a request on gpt-4o-mini, so $0.01 pays for about 16.
MONTHLY_100 = {"cost_quota_usd": "100", "quota_period": "monthly"}
LONG = [{"role": "user", "content": "word " * 4000}]


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    servers = BackgroundServers()
    port = servers.serve(SimulatorApp(SimConfig(completion_tokens=10)))
    yield f"http://127.0.0.1:{port}"
    servers.stop()


@pytest.fixture(scope="module")
def dropping_sim() -> Iterator[str]:
    """A backend that sends half an answer, then aborts the connection: Azure may bill such a try."""
    servers = BackgroundServers()
    port = servers.serve(SimulatorApp(SimConfig(completion_tokens=10, faults=(Fault(kind="drop"),))))
    yield f"http://127.0.0.1:{port}"
    servers.stop()


def requests_seen(url: str) -> int:
    # A plain blocking call is fine: the simulator runs on its own thread's event loop.
    return len(httpx.get(url + "/_sim/requests").json()["requests"])


def make_config(sim_url: str, rules: list[dict[str, Any]], counters: str = "memory://", **extra: Any) -> Any:
    return config_from_dict(
        {
            "backends": [
                {
                    "name": "sim",
                    "url": sim_url,
                    "auth": {"type": "none"},
                    "simulator": True,
                    "deployments": ["gpt-4o", "gpt-4o-mini", {"name": "ft", "model": "contoso-ft-1"}],
                },
                *extra.pop("backends", []),
            ],
            "keys": [
                {"name": "ka", "sha256": sha256_hex("alice-key"), "user": "alice", "tenant": "contoso"},
                {"name": "kb", "sha256": sha256_hex("bob-key"), "user": "bob", "tenant": "contoso"},
                {"name": "ke", "sha256": sha256_hex("eve-key"), "user": "eve", "tenant": "fabrikam"},
            ],
            "limits": {"rules": rules, **extra.pop("limits", {})},
            "stores": {"counters": counters, "health": "memory://"},
            **extra,
        }
    )


CENT_A_MONTH = {"name": "contoso-budget", "key": "tenant", "cost_quota_usd": "0.01", "quota_period": "monthly"}


async def call(gateway: Gateway, headers: dict[str, str], **body: Any) -> GatewayResponse:
    payload = {"model": "gpt-4o-mini", "messages": LONG, "max_tokens": 16, **body}
    raw = orjson.dumps(payload)
    return await gateway.handle(GatewayRequest("POST", "/v1/chat/completions", {}, headers, raw, len(raw)))


def cost_of(response: GatewayResponse) -> int:
    """What the answer's usage costs at gpt-4o-mini's prices, in micro-dollars."""
    usage = orjson.loads(response.body)["usage"]
    return MINI.cost_micro_usd(usage["prompt_tokens"], usage["completion_tokens"])


async def spent(gateway: Gateway, rule: str = "contoso-budget", value: str = "contoso") -> int:
    await gateway.tasks.drain()  # settlements run in the background
    counters = gateway.counters
    assert counters is not None
    return await counters.get(f"cost:{rule}:{value}", MONTH_START)


async def test_a_cent_a_month_admits_several_then_refuses_and_says_when_it_renews(sim: str) -> None:
    async with running(make_config(sim, [CENT_A_MONTH]), ManualClock(START)) as gateway:
        costs: list[int] = []
        while len(costs) < 100:
            response = await call(gateway, ALICE if len(costs) % 2 else BOB)
            if response.status != 200:
                break
            costs.append(cost_of(response))
            remaining = Decimal(response.header("x-aigw-budget-remaining-usd") or "-1")
            assert Decimal(0) <= remaining < Decimal("0.01")
            await gateway.tasks.drain()
        assert len(costs) >= 5, "several requests fit in the budget"
        assert response.status == 403
        error = orjson.loads(response.body)["error"]
        assert error["code"] == "budget_exceeded" and error["type"] == "insufficient_quota"
        assert "contoso-budget" in error["message"]
        assert "renews at 2026-12-01T00:00:00Z" in error["message"]
        assert response.header("x-should-retry") == "false"
        assert response.header("retry-after") == str(MONTH_END - int(START))
        spent_micro_usd = await spent(gateway)
        assert spent_micro_usd == sum(costs) <= 10_000
        assert response.header("x-aigw-budget-remaining-usd") == usd(10_000 - spent_micro_usd)
        # Another tenant has its own budget; contoso's renews with the month.
        assert (await call(gateway, EVE)).status == 200
        assert isinstance(gateway.clock, ManualClock)
        gateway.clock.advance(MONTH_END - START)
        assert (await call(gateway, ALICE)).status == 200


async def test_alice_of_contoso_does_not_use_alice_of_fabrikams_budget(sim: str) -> None:
    """A ``key: user`` budget counts each (tenant, user): two tenants' users of one name have a budget each."""
    keys = [
        {"name": "ka", "sha256": sha256_hex("alice-key"), "user": "alice", "tenant": "contoso"},
        {"name": "kf", "sha256": sha256_hex("other-alice-key"), "user": "alice", "tenant": "fabrikam"},
    ]
    rule = {**CENT_A_MONTH, "name": "user-budget", "key": "user"}
    async with running(make_config(sim, [rule], keys=keys), ManualClock(START)) as gateway:
        for _ in range(100):
            response = await call(gateway, {"api-key": "other-alice-key"})
            await gateway.tasks.drain()
            if response.status != 200:
                break
        assert response.status == 403, "fabrikam's alice spent her budget"
        assert (await call(gateway, ALICE)).status == 200, "contoso's alice has her own"
        assert await spent(gateway, "user-budget", "fabrikam/alice") <= 10_000


async def test_quota_exceeded_status_429_applies_to_budgets(sim: str) -> None:
    config = make_config(sim, [{**CENT_A_MONTH, "cost_quota_usd": "0.0001"}], limits={"quota_exceeded_status": 429})
    async with running(config, ManualClock(START)) as gateway:
        refused = await call(gateway, ALICE, messages=[{"role": "user", "content": "hi"}], max_tokens=200)
        assert refused.status == 429
        assert orjson.loads(refused.body)["error"]["code"] == "cost_exceeds_budget"


async def test_concurrent_requests_never_spend_more_than_the_budget(sim: str, tmp_path: Path) -> None:
    # SQLite counters, as `aigw serve` uses by default: 40 requests at once, a budget that fits about 16.
    config = make_config(sim, [CENT_A_MONTH], counters=f"sqlite:///{tmp_path}/counters.db")
    async with running(config, ManualClock(START)) as gateway:
        responses = await asyncio.gather(*(call(gateway, ALICE) for _ in range(40)))
        admitted = [r for r in responses if r.status == 200]
        refused = [r for r in responses if r.status != 200]
        assert admitted and refused
        assert {orjson.loads(r.body)["error"]["code"] for r in refused} == {"budget_exceeded"}
        spent_micro_usd = await spent(gateway)
        assert spent_micro_usd == sum(cost_of(r) for r in admitted) <= 10_000


async def test_a_stream_settles_to_its_actual_cost(sim: str) -> None:
    async with running(make_config(sim, [CENT_A_MONTH]), ManualClock(START)) as gateway:
        response = await call(gateway, ALICE, stream=True, max_tokens=200)
        assert response.status == 200 and response.stream is not None
        assert response.header("x-aigw-budget-remaining-usd") is not None
        chunks = [chunk async for chunk in response.stream]
        assert b"[DONE]" in b"".join(chunks)
        streamed = await spent(gateway)
        # Settled from the reservation (200 completion tokens) to its usage: the same prompt as a JSON answer
        # (fabrikam's, counted apart) and the simulator's 10 completion tokens.
        reference = await call(gateway, EVE)
        assert streamed == cost_of(reference) < MINI.cost_micro_usd(4000, 200)


async def test_a_stream_without_usage_costs_its_counted_tokens(sim: str) -> None:
    async with running(make_config(sim, [CENT_A_MONTH]), ManualClock(START)) as gateway:
        headers = {**ALICE, "x-aigw-sim-no-usage": "1"}
        response = await call(gateway, headers, stream=True, max_tokens=16)
        assert response.stream is not None
        _ = [chunk async for chunk in response.stream]
        counted = await spent(gateway)  # no usage came: the prompt estimate and the completion counted from its text
        assert 0 < counted <= MINI.cost_micro_usd(4100, 16)


async def test_a_try_that_was_cut_costs_its_estimates_price_on_top_of_the_answer(sim: str, dropping_sim: str) -> None:
    first = {
        "name": "cut",
        "url": dropping_sim,
        "priority": 0,
        "auth": {"type": "none"},
        "deployments": ["gpt-4o-mini"],
    }
    async with running(make_config(sim, [CENT_A_MONTH], backends=[first]), ManualClock(START)) as gateway:
        response = await call(gateway, ALICE)
        assert response.status == 200 and response.header("x-aigw-attempts") == "2"
        usage = orjson.loads(response.body)["usage"]
        estimate = MINI.cost_micro_usd(usage["prompt_tokens"], 16)  # the prompt estimate is exact here
        assert await spent(gateway) == estimate + cost_of(response)


async def test_fail_open_counts_the_actual_cost_once_the_store_is_back(sim: str, tmp_path: Path) -> None:
    blocker = tmp_path / "counters"
    blocker.write_text("a file where the store's directory should be: the store cannot open")
    config = make_config(
        sim, [CENT_A_MONTH], counters=f"sqlite:///{blocker}/c.db", limits={"on_store_error": "fail_open"}
    )
    async with running(config, ManualClock(START)) as gateway:
        response = await call(gateway, ALICE, stream=True)
        assert response.status == 200 and response.stream is not None  # admitted unchecked
        assert response.header("x-aigw-budget-remaining-usd") is None
        blocker.unlink()
        blocker.mkdir()  # the store is back before the stream ends, when its cost is counted
        _ = [chunk async for chunk in response.stream]
        reference = await call(gateway, EVE)  # the same request's JSON answer, counted for fabrikam
        assert await spent(gateway) == cost_of(reference)


async def test_an_unpriced_deployment_cannot_be_used_under_a_budget(sim: str, caplog: pytest.LogCaptureFixture) -> None:
    wildcard = {"name": "any", "url": sim, "auth": {"type": "none"}, "simulator": True, "deployments": ["*"]}
    rule = {**CENT_A_MONTH, "tenants": ["contoso"]}
    async with running(make_config(sim, [rule], backends=[wildcard]), ManualClock(START)) as gateway:
        # Said at start, naming the unpriced deployments.
        assert "budget rule 'contoso-budget' covers deployments without a price" in caplog.text
        assert "cannot use: ft (add their models to usage.prices)" in caplog.text
        seen = requests_seen(sim)
        for model, name in (("ft", "contoso-ft-1"), ("my-own-model", "my-own-model")):
            refused = await call(gateway, ALICE, model=model)
            assert refused.status == 403
            error = orjson.loads(refused.body)["error"]
            assert error["code"] == "budget_unpriced_model"
            assert f"'{name}'" in error["message"] and "usage.prices" in error["message"]
            assert refused.header("x-should-retry") == "false"
        assert await spent(gateway) == 0
        assert requests_seen(sim) == seen  # nothing reached the backend
        assert (await call(gateway, EVE, model="ft")).status == 200  # no budget for fabrikam: no price needed
        assert (await call(gateway, ALICE, model="gpt-4o-mini")).status == 200


async def test_a_price_override_makes_a_deployment_usable_under_a_budget(sim: str) -> None:
    prices = {"contoso-ft-1": {"input": "0.30", "output": "1.20"}}
    config = make_config(sim, [{**CENT_A_MONTH, "deployments": ["ft"]}], usage={"prices": prices})
    async with running(config, ManualClock(START)) as gateway:
        response = await call(gateway, ALICE, model="ft")
        assert response.status == 200
        usage = orjson.loads(response.body)["usage"]
        expected = usage["prompt_tokens"] * Decimal("0.30") + usage["completion_tokens"] * Decimal("1.20")
        assert await spent(gateway) == round(expected)


async def test_a_request_that_alone_costs_more_than_the_budget_reserves_nothing(sim: str) -> None:
    async with running(make_config(sim, [CENT_A_MONTH]), ManualClock(START)) as gateway:
        refused = await call(gateway, ALICE, max_tokens=1_000_000)  # 1M completion tokens: $0.60 > $0.01
        assert refused.status == 403
        error = orjson.loads(refused.body)["error"]
        assert error["code"] == "cost_exceeds_budget" and "max_tokens" in error["message"]
        assert refused.header("x-should-retry") == "false"
        assert await spent(gateway) == 0
        assert (await call(gateway, ALICE)).status == 200


async def test_a_rule_with_tokens_and_money_shares_its_period(sim: str) -> None:
    rule = {**CENT_A_MONTH, "token_quota": 1_000_000, "tokens_per_minute": 1_000_000}
    async with running(make_config(sim, [rule]), ManualClock(START)) as gateway:
        response = await call(gateway, ALICE)
        assert response.status == 200
        assert response.header("x-aigw-quota-remaining-tokens") is not None
        assert response.header("x-ratelimit-limit-tokens") == "1000000"
        assert response.header("x-aigw-budget-remaining-usd") is not None
        assert await spent(gateway) == cost_of(response)


async def test_a_budget_counts_the_model_that_answered_not_the_first_backends(sim: str) -> None:
    """One deployment on two backends with different models: the cheap first one fails, the dear second one
    answers. The budget settles at the price of the model that answered (as the usage record does), not the
    first backend's (a 100x undercount here); admission reserved at the dearer."""
    servers = BackgroundServers()
    try:
        failing = servers.serve(
            SimulatorApp(SimConfig(deployments=(SimDeployment(name="chat", faults=(Fault(kind="500"),)),)))
        )
        backends = [
            {"name": "cheap", "url": f"http://127.0.0.1:{failing}", "priority": 1, "model": "gpt-4o-mini"},
            {"name": "dear", "url": sim, "priority": 2, "model": "o1"},
        ]
        config = config_from_dict(
            {
                "backends": [
                    {
                        "name": b["name"],
                        "url": b["url"],
                        "auth": {"type": "none"},
                        "simulator": True,
                        "priority": b["priority"],
                        "deployments": [{"name": "chat", "model": b["model"]}],
                    }
                    for b in backends
                ],
                "keys": [{"name": "ka", "sha256": sha256_hex("alice-key"), "user": "alice", "tenant": "contoso"}],
                "limits": {"rules": [{"name": "contoso-budget", "key": "tenant", **MONTHLY_100}]},
                "stores": {"counters": "memory://", "health": "memory://"},
            }
        )
        sink = ListSink()
        async with running(config, ManualClock(START), usage_sink=sink) as gw:
            raw = orjson.dumps({"messages": [{"role": "user", "content": "word " * 2000}], "max_tokens": 16})
            request = GatewayRequest(
                "POST", "/openai/deployments/chat/chat/completions", {"api-version": "2024-10-21"}, ALICE, raw, len(raw)
            )
            response = await gw.handle(request)
            assert response.status == 200
            await gw.tasks.drain()
            counted = await spent(gw)
    finally:
        servers.stop()
    (record,) = [r for r in sink.records if r.status == 200]
    assert record.backend == "dear" and record.model == "o1" and record.cost_micro_usd
    assert counted == record.cost_micro_usd


def test_admission_reserves_at_the_dearest_model_and_a_cut_try_costs_its_backends_price() -> None:
    prices = load_prices()
    mini, o1 = prices.price_of("gpt-4o-mini"), prices.price_of("o1")
    assert mini is not None and o1 is not None
    config = config_from_dict(
        {
            "backends": [
                {
                    "name": "cheap",
                    "url": "http://127.0.0.1:1",
                    "deployments": [{"name": "chat", "model": "gpt-4o-mini"}],
                },
                {"name": "dear", "url": "http://127.0.0.1:1", "deployments": [{"name": "chat", "model": "o1"}]},
            ]
        }
    )
    tokens = TokenUsage(estimate=1100, prompt_estimate=1000)
    pricing = DeploymentPrices(PoolTable(config), prices).pricing("chat", tokens)
    assert pricing is not None and pricing.dearest == o1
    ctx = RequestContext(GatewayRequest("POST", "/", {}, {}, b"", 0), "r", 0.0, tokens=tokens)
    ctx.attempts = [Attempt("cheap", maybe_billed=True), Attempt("gone", maybe_billed=True)]
    assert billed_micro_usd(pricing, ctx) == mini.cost_micro_usd(1000, 100) + o1.cost_micro_usd(1000, 100)


def test_cached_prompt_tokens_cost_the_cached_input_price() -> None:
    tokens = TokenUsage()
    body = {"usage": {"prompt_tokens": 2000, "completion_tokens": 10, "prompt_tokens_details": {"cached_tokens": 1024}}}
    record_json_usage(orjson.dumps(body), tokens)
    assert tokens.cached_prompt == 1024
    ctx = RequestContext(GatewayRequest("POST", "/", {}, {}, b"", 0), "r", 0.0, tokens=tokens)
    # 976 x 0.15 + 1024 x 0.075 + 10 x 0.60 = 146.4 + 76.8 + 6 = 229.2
    assert answer_micro_usd(Pricing.flat(MINI), ctx, 200) == 229


# -- config


def rule_config(**rule: Any) -> dict[str, Any]:
    return {
        "backends": [
            {"name": "b", "url": "http://127.0.0.1:1", "deployments": ["gpt-4o-mini", {"name": "ft", "model": "x-ft"}]}
        ],
        "limits": {"rules": [{"name": "r", "key": "tenant", **rule}]},
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [("5", Decimal(5)), (5, Decimal(5)), ("0.01", Decimal("0.01")), ("0.000001", Decimal("0.000001"))],
)
def test_budgets_are_strings_or_whole_numbers_of_usd(value: Any, expected: Decimal) -> None:
    config = config_from_dict(rule_config(cost_quota_usd=value, quota_period="monthly"))
    assert config.limits.rules[0].cost_quota_usd == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0.01, 'as a string or a whole number, e.g. "5" or "0.01"'),
        (True, "as a string or a whole number"),
        ("1e309", "at most 1000000000 USD"),
        ("-1", "more than 0"),
        ("0", "more than 0"),
        ("nan", "more than 0"),
        ("Infinity", "more than 0"),
        ("five", "'five' is not a number of USD"),
        ("0.0000001", "at most 6 decimal places"),
    ],
)
def test_bad_budgets_are_refused_at_load(value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=r"limits\.rules\.0\.cost_quota_usd") as caught:
        config_from_dict(rule_config(cost_quota_usd=value, quota_period="monthly"))
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "rule",
    [
        {"cost_quota_usd": "5"},  # no period
        {"tokens_per_minute": 100, "quota_period": "daily"},  # a period with no quota
    ],
)
def test_a_budget_needs_its_period(rule: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="need quota_period, and quota_period needs one of them"):
        config_from_dict(rule_config(**rule))


def test_a_budget_rule_naming_an_unpriced_deployment_is_refused_at_load() -> None:
    with pytest.raises(ConfigError, match=r"rules 'r': deployment 'ft' \(model 'x-ft'\) has no price"):
        config_from_dict(rule_config(cost_quota_usd="5", quota_period="daily", deployments=["gpt-4o-mini", "ft"]))
    priced = rule_config(cost_quota_usd="5", quota_period="daily", deployments=["ft"])
    priced["usage"] = {"prices": {"x-ft": {"input": "1", "output": "2"}}}
    assert config_from_dict(priced).limits.rules[0].deployments == ("ft",)
    # Token rules need no price.
    assert config_from_dict(rule_config(token_quota=5, quota_period="daily", deployments=["ft"]))


async def test_the_demo_gives_tenant_demo_2_a_five_dollar_monthly_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIGW_DEMO_BACKEND_KEY", "demo-backend-key-for-this-test")
    servers = BackgroundServers()
    try:
        config = start_demo_backends(servers)
        stores = StoreSettings(counters="memory://", cache="memory://", health="memory://")
        async with running(config.model_copy(update={"stores": stores})) as gateway:
            response = await call(gateway, {"api-key": DEMO_KEY_2}, model="gpt-4o")
            assert response.status == 200
            remaining = Decimal(response.header("x-aigw-budget-remaining-usd") or "0")
            assert Decimal("4.9") < remaining < Decimal(5)
            other = await call(gateway, {"api-key": DEMO_KEY}, model="gpt-4o")
            assert other.status == 200 and other.header("x-aigw-budget-remaining-usd") is None
    finally:
        servers.stop()
