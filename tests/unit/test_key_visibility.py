"""What each key sees: backend details for admin keys only; other keys see the deployments they may use."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest

from aigw.serve import BackgroundServers
from gateway_core.app import Gateway
from gateway_core.config import config_from_dict, sha256_hex
from gateway_core.context import GatewayRequest, GatewayResponse
from gateway_core.simulator.app import SimulatorApp
from gateway_core.simulator.settings import SimConfig

ENV = {"BACKEND_KEY": "the-wrong-backend-key"}


@pytest.fixture(scope="module")
def sims() -> Iterator[tuple[str, str]]:
    """An open simulator, and one that wants a backend key the gateway does not have."""
    servers = BackgroundServers()
    open_url = f"http://127.0.0.1:{servers.serve(SimulatorApp(SimConfig(region='eastus')))}"
    locked_url = f"http://127.0.0.1:{servers.serve(SimulatorApp(SimConfig(region='westus', api_key='right')))}"
    yield open_url, locked_url
    servers.stop()


@pytest.fixture
async def gateway(sims: tuple[str, str]) -> AsyncIterator[Gateway]:
    open_url, locked_url = sims
    backends: list[dict[str, Any]] = [
        {"name": "open", "url": open_url, "auth": {"type": "none"}, "deployments": ["gpt-4o", "gpt-4o-mini"]},
        {
            "name": "locked",
            "url": locked_url,
            "auth": {"type": "api_key", "key_env": "BACKEND_KEY"},
            "deployments": ["locked-model"],
        },
    ]
    keys = [
        {"name": "admin", "sha256": sha256_hex("admin"), "user": "ops", "admin": True},
        {"name": "user", "sha256": sha256_hex("user"), "user": "u", "deployments": ["gpt-4o", "locked-model"]},
    ]
    gw = Gateway(config_from_dict({"backends": backends, "keys": keys, "stores": {"health": "memory://"}}), env=ENV)
    await gw.start()
    yield gw
    await gw.close()


async def get(gw: Gateway, path: str, key: str) -> GatewayResponse:
    return await gw.handle(GatewayRequest("GET", path, {}, {"api-key": key}, b"", 0))


async def test_status_shows_backends_and_health_to_admin_keys_only(gateway: Gateway, sims: tuple[str, str]) -> None:
    admin = orjson.loads((await get(gateway, "/status", "admin")).body)
    assert [b["name"] for b in admin["backends"]] == ["open", "locked"]
    assert "probe" in admin["backends"][0]["health"]
    response = await get(gateway, "/status", "user")
    assert response.status == 200
    assert orjson.loads(response.body) == {
        "status": "ok",
        "deployments": ["gpt-4o", "locked-model"],
        "any_deployment": False,
    }
    assert not any(url.encode() in response.body for url in sims)


async def test_model_lists_show_a_key_only_the_deployments_it_may_use(gateway: Gateway) -> None:
    for path in ("/v1/models", "/openai/deployments"):
        user = orjson.loads((await get(gateway, path, "user")).body)
        assert [d["id"] for d in user["data"]] == ["gpt-4o", "locked-model"]
        admin = orjson.loads((await get(gateway, path, "admin")).body)
        assert [d["id"] for d in admin["data"]] == ["gpt-4o", "gpt-4o-mini", "locked-model"]


async def test_a_backend_refusing_the_gateways_credential_is_a_502_that_says_so(gateway: Gateway) -> None:
    raw = orjson.dumps({"model": "locked-model", "messages": [{"role": "user", "content": "hi"}]})
    response = await gateway.handle(
        GatewayRequest("POST", "/v1/chat/completions", {}, {"api-key": "user"}, raw, len(raw))
    )
    assert response.status == 502 and response.header("x-aigw-attempts") == "1"
    error = orjson.loads(response.body)["error"]
    assert error["code"] == "backend_credential_refused"
    assert "gateway's own credential" in error["message"] and "your key was accepted" in error["message"]


async def test_a_deployment_the_key_may_not_use_answers_as_an_unknown_one_on_every_route(gateway: Gateway) -> None:
    """A 403 for an existing deployment and a 404 for an unknown one let a restricted key list the others'
    deployments; both now get the same 404 DeploymentNotFound, on each surface and operation."""
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    bodies: dict[str, dict[str, Any]] = {
        "chat/completions": chat,
        "completions": {"prompt": "hi"},
        "embeddings": {"input": "hi"},
    }
    for operation, body in bodies.items():
        answers = []
        for name in ("gpt-4o-mini", "no-such-model"):  # exists but not for this key; exists nowhere
            azure = f"/openai/deployments/{name}/{operation}"
            for path, raw in ((azure, body), (f"/v1/{operation}", {**body, "model": name})):
                response = await post(gateway, path, raw, "user")
                error = orjson.loads(response.body)["error"]
                answers.append((path.replace(name, "NAME"), response.status, {**error, "message": ""}))
                assert error["message"] == f"The deployment '{name}' does not exist on this gateway."
        assert answers[:2] == answers[2:], operation
        assert [status for _, status, _ in answers] == [404] * 4
        assert {e["code"] for _, _, e in answers} == {"DeploymentNotFound"}
    assert (await post(gateway, "/v1/chat/completions", {**chat, "model": "gpt-4o-mini"}, "admin")).status == 200


async def post(gw: Gateway, path: str, body: dict[str, Any], key: str) -> GatewayResponse:
    raw = orjson.dumps(body)
    return await gw.handle(GatewayRequest("POST", path, {"api-version": "2024-10-21"}, {"api-key": key}, raw, len(raw)))
