"""GET /usage/prices, /usage/records and /usage/summary: who sees what, and every bad parameter named."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest

from gateway_core.app import Gateway
from gateway_core.clock import ManualClock
from gateway_core.config import config_from_dict, sha256_hex
from gateway_core.context import GatewayRequest, GatewayResponse
from gateway_core.usage.api import summary_body
from gateway_core.usage.record import SummaryKey, SummaryTotals, UsageBatch, UsageRecord, summarise
from gateway_core.usage.summariser import Summariser
from tests.inprocess import running

NOW_S = 1_767_312_000.0  # 2026-01-02T00:00:00Z
DAY_S = 86_400.0
KEYS = [
    {"name": "admin", "sha256": sha256_hex("admin-key"), "user": "ops", "tenant": "contoso", "admin": True},
    {"name": "alice", "sha256": sha256_hex("alice-key"), "user": "alice", "tenant": "contoso"},
    {"name": "bob", "sha256": sha256_hex("bob-key"), "user": "bob", "tenant": "fabrikam"},
]


def rec(user: str, tenant: str, time_s: float, deployment: str = "gpt-4o", cost: int | None = 100) -> UsageRecord:
    record_id = uuid.uuid4().hex
    return UsageRecord(
        record_id=record_id,
        time_s=time_s,
        request_id=f"req-{user}-{int(time_s)}",
        tenant=tenant,
        user=user,
        key_id=user,
        method="POST",
        path="/v1/chat/completions",
        status=200,
        deployment=deployment,
        model=deployment,
        prompt_tokens=100,
        completion_tokens=10,
        cost_micro_usd=cost,
    )


RECORDS = [
    rec("alice", "contoso", NOW_S - 10),
    rec("alice", "contoso", NOW_S - DAY_S, deployment="gpt-4o-mini", cost=7),
    rec("bob", "fabrikam", NOW_S - 20),
    rec("alice", "contoso", NOW_S - 30 * DAY_S),  # outside the default 7 days
]


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    backend = {"name": "b", "url": "http://127.0.0.1:9", "auth": {"type": "none"}, "deployments": ["gpt-4o"]}
    config = config_from_dict(
        {"backends": [backend], "keys": KEYS, "stores": {"health": "memory://", "usage": "memory://"}}
    )
    async with running(config, clock=ManualClock(NOW_S + 3600)) as gw:
        assert gw.usage_runtime is not None
        batch = UsageBatch("b1", tuple(RECORDS))
        await gw.usage_runtime.store.write_batch(batch)
        await Summariser(gw.usage_runtime.store, gw.usage_runtime.queue, config.usage).process("b1")
        yield gw


async def get(gw: Gateway, path: str, key: str, query: str | dict[str, str] = "") -> GatewayResponse:
    raw = query if isinstance(query, str) else urlencode(query)
    request = GatewayRequest("GET", path, {}, {"api-key": key}, b"", 0, "127.0.0.1", query_string=raw)
    return await gw.handle(request)


def body(response: GatewayResponse) -> Any:
    return orjson.loads(response.body)


async def test_prices_for_admin_keys_only(gateway: Gateway) -> None:
    prices = body(await get(gateway, "/usage/prices", "admin-key"))
    assert prices == gateway.prices.as_dict() and prices["currency"] == "USD" and prices["as_of"]
    refused = await get(gateway, "/usage/prices", "alice-key")
    assert refused.status == 403 and body(refused)["error"]["code"] == "admin_only"


async def test_admin_sees_every_record_newest_first_and_filters(gateway: Gateway) -> None:
    every = body(await get(gateway, "/usage/records", "admin-key", {"from": "2025-12-01"}))["data"]
    assert [r["record_id"] for r in every] == [
        r.record_id for r in sorted(RECORDS, key=lambda r: r.time_s, reverse=True)
    ]
    assert every[0]["cost_usd"] == "0.0001"
    default = body(await get(gateway, "/usage/records", "admin-key"))
    assert (default["from"], default["to"]) == ("2025-12-27", "2026-01-02")  # the last 7 days
    assert len(default["data"]) == 3
    bobs = body(await get(gateway, "/usage/records", "admin-key", {"tenant": "fabrikam"}))["data"]
    assert [r["user"] for r in bobs] == ["bob"]
    one = body(await get(gateway, "/usage/records", "admin-key", {"request_id": RECORDS[2].request_id}))["data"]
    assert [r["record_id"] for r in one] == [RECORDS[2].record_id]
    two = body(await get(gateway, "/usage/records", "admin-key", {"limit": "2"}))["data"]
    assert len(two) == 2


async def test_a_user_key_sees_only_its_own_records(gateway: Gateway) -> None:
    own = body(await get(gateway, "/usage/records", "alice-key"))["data"]
    assert {r["user"] for r in own} == {"alice"} and len(own) == 2
    # Bob looking for Alice's request by its id finds nothing: the id does not widen what a key sees.
    assert body(await get(gateway, "/usage/records", "bob-key", {"request_id": RECORDS[0].request_id}))["data"] == []
    same = await get(gateway, "/usage/records", "alice-key", {"user": "alice", "tenant": "contoso"})
    assert len(body(same)["data"]) == 2


@pytest.mark.parametrize(
    ("query", "param"),
    [({"user": "alice"}, "user"), ({"tenant": "contoso"}, "tenant"), ({"user": "bob", "tenant": "contoso"}, "tenant")],
)
async def test_another_users_or_tenants_usage_is_refused_to_a_user_key(
    gateway: Gateway, query: dict[str, str], param: str
) -> None:
    for path in ("/usage/records", "/usage/summary"):
        response = await get(gateway, path, "bob-key", query)
        assert response.status == 403, path
        assert body(response)["error"]["param"] == param


async def test_summary_groups_and_sums(gateway: Gateway) -> None:
    by_user = body(await get(gateway, "/usage/summary", "admin-key", {"group_by": "user"}))
    assert [(row["user"], row["requests"], row["cost_micro_usd"]) for row in by_user["data"]] == [
        ("alice", 2, 107),
        ("bob", 1, 100),
    ]
    assert by_user["total"]["requests"] == 3 and by_user["total"]["cost_usd"] == "0.000207"
    by_day = body(await get(gateway, "/usage/summary", "admin-key", {"from": "2025-12-01", "to": "2026-01-02"}))
    assert [row["day"] for row in by_day["data"]] == ["2025-12-03", "2026-01-01"]
    expected = summarise(RECORDS)
    assert by_day["total"]["prompt_tokens"] == sum(t.prompt_tokens for t in expected.values())
    by_model = body(await get(gateway, "/usage/summary", "alice-key", {"group_by": "model"}))
    assert [(row["model"], row["requests"]) for row in by_model["data"]] == [("gpt-4o", 1), ("gpt-4o-mini", 1)]


@pytest.mark.parametrize(
    ("path", "query", "param"),
    [
        ("/usage/records", "from=2026-13-01", "from"),
        ("/usage/records", "to=yesterday", "to"),
        ("/usage/records", "from=2026-1-1", "from"),
        ("/usage/records", "from=2026-01-05&to=2026-01-01", "from"),
        ("/usage/records", "from=2024-01-01&to=2026-01-01", "to"),
        ("/usage/records", "limit=0", "limit"),
        ("/usage/records", "limit=1001", "limit"),
        ("/usage/records", "limit=-1", "limit"),
        ("/usage/records", "limit=%D9%A3", "limit"),  # an Arabic-Indic digit: isdigit() but not ASCII
        ("/usage/records", "limit=99999999999999999999", "limit"),
        ("/usage/records", "request_id=" + "x" * 129, "request_id"),
        ("/usage/records", "request_id=a%20b", "request_id"),
        ("/usage/records", "user=" + "u" * 257, "user"),
        ("/usage/records", "tenant=a%00b", "tenant"),
        ("/usage/records", "limit=5&limit=6", "limit"),
        ("/usage/records", "user=", "user"),
        ("/usage/records", "group_by=user", "group_by"),
        ("/usage/summary", "group_by=key_id", "group_by"),
        ("/usage/summary", "group_by=user&group_by=day", "group_by"),
        ("/usage/summary", "limit=5", "limit"),
        ("/usage/prices", "from=2026-01-01", "from"),
        ("/usage/summary", "user=" + "u" * 3000, "query"),
    ],
)
async def test_every_bad_parameter_is_a_400_that_names_it(gateway: Gateway, path: str, query: str, param: str) -> None:
    response = await get(gateway, path, "admin-key", query)
    assert response.status == 400, body(response)
    error = body(response)["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


async def test_usage_endpoints_need_a_key(gateway: Gateway) -> None:
    for path in ("/usage/prices", "/usage/records", "/usage/summary"):
        response = await get(gateway, path, "no-such-key")
        assert response.status == 401


async def test_with_usage_off_records_are_not_found_but_prices_answer() -> None:
    backend = {"name": "b", "url": "http://127.0.0.1:9", "auth": {"type": "none"}, "deployments": ["gpt-4o"]}
    config = config_from_dict(
        {"backends": [backend], "keys": KEYS, "stores": {"health": "memory://"}, "usage": {"enabled": False}}
    )
    async with running(config) as gw:
        assert gw.usage_runtime is None
        response = await get(gw, "/usage/records", "admin-key")
        assert response.status == 404 and body(response)["error"]["code"] == "usage_disabled"
        assert (await get(gw, "/usage/prices", "admin-key")).status == 200


async def test_a_user_key_reading_its_records_learns_no_backend_or_region() -> None:
    """A non-admin key's /status shows no backends or regions; /usage/records must not either (an admin's does)."""
    backend = {"name": "b", "url": "http://127.0.0.1:9", "auth": {"type": "none"}, "deployments": ["gpt-4o"]}
    config = config_from_dict(
        {"backends": [backend], "keys": KEYS, "stores": {"health": "memory://", "usage": "memory://"}}
    )
    async with running(config, clock=ManualClock(NOW_S + 3600)) as gw:
        assert gw.usage_runtime is not None
        record = replace(RECORDS[0], backend="prod-swedencentral-ptu", region="swedencentral", attempts=2)
        await gw.usage_runtime.store.write_batch(UsageBatch("b1", (record,)))
        (own,) = body(await get(gw, "/usage/records", "alice-key"))["data"]
        (admins,) = body(await get(gw, "/usage/records", "admin-key"))["data"]
    assert "backend" not in own and "region" not in own and own["attempts"] == 2
    assert (admins["backend"], admins["region"]) == ("prod-swedencentral-ptu", "swedencentral")


def test_summary_by_user_keeps_same_named_users_of_different_tenants_apart() -> None:
    """User names are unique only within a tenant: group_by=user groups by (tenant, user) and shows both."""
    rows = {
        SummaryKey("2026-01-02", "contoso", "alice", "gpt-4o", "gpt-4o"): SummaryTotals(requests=1, cost_micro_usd=5),
        SummaryKey("2026-01-02", "fabrikam", "alice", "gpt-4o", "gpt-4o"): SummaryTotals(requests=9, cost_micro_usd=95),
    }
    data = summary_body(rows, "user", "2026-01-02", "2026-01-02")["data"]
    assert [(row["tenant"], row["user"], row["requests"]) for row in data] == [
        ("contoso", "alice", 1),
        ("fabrikam", "alice", 9),
    ]
