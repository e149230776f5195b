"""The forwarder keeps parsed upstream URLs: each request still reaches its backend at the deployment and
api-version it asked for, the map stays bounded, and a URL that fails its checks is never kept."""

from __future__ import annotations

import orjson
import pytest
from yarl import URL

from gateway_core.app import Gateway
from gateway_core.catalogue import PoolTable
from gateway_core.clock import SystemClock
from gateway_core.config import GatewayConfig, config_from_dict, sha256_hex
from gateway_core.context import GatewayRequest, RequestContext
from gateway_core.providers.client import UpstreamClient
from gateway_core.providers.wire import upstream_url
from gateway_core.routing import forward
from gateway_core.routing.health import HealthView
from tests.upstream import serve_recorders

KEY = "url-key"


def config(url: str) -> GatewayConfig:
    return config_from_dict(
        {
            "backends": [
                {
                    "name": "b",
                    "url": url,
                    "auth": {"type": "none"},
                    "deployments": [
                        "gpt-4o",
                        {"name": "mini", "backend_name": "gpt-4o-mini-upstream", "model": "gpt-4o"},
                    ],
                }
            ],
            "keys": [{"name": "k", "sha256": sha256_hex(KEY), "user": "u"}],
            "stores": {"health": "memory://"},
            "usage": {"enabled": False},
        }
    )


def request(deployment: str, api_version: str) -> GatewayRequest:
    raw = orjson.dumps({"messages": [{"role": "user", "content": "hi"}]})
    path = f"/openai/deployments/{deployment}/chat/completions"
    headers = {"api-key": KEY, "content-type": "application/json"}
    return GatewayRequest("POST", path, {"api-version": api_version}, headers, raw, len(raw))


async def test_each_request_reaches_the_deployment_and_api_version_it_asked_for() -> None:
    asked = [
        ("gpt-4o", "2024-10-21"),
        ("mini", "2024-10-21"),
        ("gpt-4o", "2025-01-01-preview"),
        ("gpt-4o", "2024-10-21"),
    ]
    with serve_recorders() as [(url, recorder)]:
        gateway = Gateway(config(url))
        await gateway.start()
        try:
            for deployment, api_version in asked:
                assert (await gateway.handle(request(deployment, api_version))).status == 200
        finally:
            await gateway.close()
    upstream = {"gpt-4o": "gpt-4o", "mini": "gpt-4o-mini-upstream"}
    assert [(r.path, r.query_string) for r in recorder.received] == [
        (f"/openai/deployments/{upstream[d]}/chat/completions", f"api-version={v}") for d, v in asked
    ]


def test_a_client_cycling_api_versions_keeps_the_map_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forward, "_MAX_URLS", 8)
    cfg = config("http://127.0.0.1:9")
    pools, clock = PoolTable(cfg), SystemClock()
    forwarder = forward.Forwarder(pools, UpstreamClient(), {}, HealthView(clock, list(cfg.backends)), clock)
    target = pools.targets("gpt-4o")[0]
    for day in range(1, 29):
        ctx = RequestContext(request=request("gpt-4o", f"2024-02-{day:02d}"), request_id="r", started_s=0.0)
        ctx.api_version = f"2024-02-{day:02d}"
        assert forwarder._url(target, ctx, "chat/completions") == URL(upstream_url(target, ctx, "chat/completions"))
        assert len(forwarder._urls) <= 8


def test_a_url_that_fails_its_checks_is_refused_every_time_and_never_kept() -> None:
    cfg = config("http://127.0.0.1:9")
    pools, clock = PoolTable(cfg), SystemClock()
    forwarder = forward.Forwarder(pools, UpstreamClient(), {}, HealthView(clock, list(cfg.backends)), clock)
    target = pools.targets("gpt-4o")[0]
    ctx = RequestContext(request=request("gpt-4o", "x"), request_id="r", started_s=0.0)
    ctx.api_version = "2024-10-21&x=\r\n"  # a caller that skipped validation: a bug, answered 500, never sent
    for _ in range(2):
        with pytest.raises(ValueError, match="unchecked"):
            forwarder._url(target, ctx, "chat/completions")
    assert forwarder._urls == {}
