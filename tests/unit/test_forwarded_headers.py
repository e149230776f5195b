"""Which client headers reach a backend: ``x-aigw-sim-*`` only a backend marked ``simulator: true``."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from aigw.serve import BackgroundServers
from gateway_core.app import Gateway
from gateway_core.config import config_from_dict, sha256_hex
from gateway_core.context import GatewayRequest
from gateway_core.simulator.app import SimulatorApp
from gateway_core.simulator.settings import SimConfig

SIM_HEADERS = {"x-aigw-sim-fault": "500", "x-aigw-sim-latency-ms": "1", "x-aigw-sim-completion-tokens": "3"}


@pytest.fixture(scope="module")
def sim() -> Iterator[tuple[str, SimulatorApp]]:
    servers = BackgroundServers()
    app = SimulatorApp(SimConfig())
    port = servers.serve(app)
    yield f"http://127.0.0.1:{port}", app
    servers.stop()


async def ask(sim_url: str, **backend: object) -> int:
    config = config_from_dict(
        {
            "backends": [{"name": "b", "url": sim_url, "auth": {"type": "none"}, "deployments": ["gpt-4o"], **backend}],
            "keys": [{"name": "k", "sha256": sha256_hex("hdr-key"), "user": "u"}],
            "routing": {"max_attempts": 1},
            "stores": {"health": "memory://"},
        }
    )
    gateway = Gateway(config)
    await gateway.start()
    try:
        raw = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
        headers = {"api-key": "hdr-key", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
        request = GatewayRequest("POST", "/v1/chat/completions", {}, {**headers, **SIM_HEADERS}, raw, len(raw))
        return (await gateway.handle(request)).status
    finally:
        await gateway.close()


async def test_a_real_backend_never_gets_sim_headers(sim: tuple[str, SimulatorApp]) -> None:
    assert await ask(sim[0]) == 200  # the fault header did not reach it
    seen = sim[1].requests[-1]["headers"]
    assert not [name for name in seen if name.startswith("x-aigw-sim-")]
    assert "traceparent" in seen  # the ordinary forwarded headers still go


async def test_a_backend_marked_simulator_gets_them(sim: tuple[str, SimulatorApp]) -> None:
    assert await ask(sim[0], simulator=True) == 500
    seen = sim[1].requests[-1]["headers"]
    assert {name: seen[name] for name in SIM_HEADERS} == SIM_HEADERS
