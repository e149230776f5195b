"""The whole pipeline in-process (``Gateway.handle``) against a simulator on a real loopback port."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest
from aiohttp import web

from aigw.serve import BackgroundServers
from gateway_core.app import Gateway
from gateway_core.config import config_from_dict, sha256_hex
from gateway_core.context import GatewayRequest
from gateway_core.simulator.app import SimulatorApp
from gateway_core.simulator.records import fingerprint
from gateway_core.simulator.settings import SimConfig

BACKEND_KEY = "openai-style-backend-key"
CLIENT = {"api-key": "client-secret"}
KEYS = [{"name": "k", "sha256": sha256_hex("client-secret"), "user": "u"}]


@pytest.fixture(scope="module")
def sim() -> Iterator[tuple[str, SimulatorApp]]:
    servers = BackgroundServers()
    app = SimulatorApp(SimConfig(api_key=BACKEND_KEY))
    port = servers.serve(app)
    yield f"http://127.0.0.1:{port}", app
    servers.stop()


def chat(path: str, body: dict[str, object], headers: dict[str, str] | None = None) -> GatewayRequest:
    raw = orjson.dumps(body)
    return GatewayRequest("POST", path, {}, {**CLIENT, **(headers or {})}, raw, len(raw))


async def test_openai_backend_gets_its_model_name_and_bearer_key(
    sim: tuple[str, SimulatorApp], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, app = sim
    monkeypatch.setenv("OAI_KEY", BACKEND_KEY)
    config = config_from_dict(
        {
            "backends": [
                {
                    "name": "oai",
                    "type": "openai",
                    "url": url,
                    "auth": {"type": "api_key", "key_env": "OAI_KEY"},
                    "deployments": [{"name": "chat", "backend_name": "gpt-4o-mini"}],
                }
            ],
            "keys": KEYS,
            "stores": {"health": "memory://"},
        }
    )
    gateway = Gateway(config)
    await gateway.start()
    try:
        # The Azure surface in, the OpenAI wire out: the deployment becomes the backend's model name.
        response = await gateway.handle(
            chat("/openai/deployments/chat/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
        )
    finally:
        await gateway.close()
    assert response.status == 200, response.body
    seen = app.requests[-1]
    assert seen["path"] == "/v1/chat/completions"
    assert seen["model"] == "gpt-4o-mini"
    assert seen["headers"]["authorization"] == fingerprint(f"Bearer {BACKEND_KEY}")  # records keep a fingerprint
    assert "api-key" not in seen["headers"]
    assert orjson.loads(response.body)["model"] == "gpt-4o-mini"


@pytest.fixture
async def identity_endpoint(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[dict[str, str]]]:
    """A managed-identity endpoint (App Service style) on loopback, recording each token request."""
    calls: list[dict[str, str]] = []

    async def token(request: web.Request) -> web.Response:
        calls.append(
            {"resource": request.query.get("resource", ""), "header": request.headers.get("X-IDENTITY-HEADER", "")}
        )
        return web.json_response(
            {
                "access_token": "entra-token-123",
                "expires_on": str(int(time.time()) + 3600),
                "resource": request.query.get("resource", ""),
                "token_type": "Bearer",
            }
        )

    app = web.Application()
    app.router.add_get("/token", token)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"http://127.0.0.1:{port}/token")
    monkeypatch.setenv("IDENTITY_HEADER", "identity-secret")
    for name in (
        "AZURE_CLIENT_ID",
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_FEDERATED_TOKEN_FILE",
        "MSI_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)
    yield calls
    await runner.cleanup()


async def test_entra_backend_gets_a_cached_managed_identity_token(
    identity_endpoint: list[dict[str, str]],
) -> None:
    # An Azure-type backend behind Entra: the simulator accepts any caller here and records the header.
    servers = BackgroundServers()
    app = SimulatorApp(SimConfig())
    port = servers.serve(app)
    config = config_from_dict(
        {
            "backends": [
                {
                    "name": "aoai",
                    "url": f"http://127.0.0.1:{port}",
                    "auth": {"type": "entra"},
                    "deployments": ["gpt-4o"],
                }
            ],
            "keys": KEYS,
            "stores": {"health": "memory://"},
        }
    )
    gateway = Gateway(config)
    await gateway.start()
    try:
        for _ in range(3):
            response = await gateway.handle(
                chat("/v1/chat/completions", {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
            )
            assert response.status == 200, response.body
    finally:
        await gateway.close()
        servers.stop()
    assert app.requests[-1]["headers"]["authorization"] == fingerprint("Bearer entra-token-123")
    assert identity_endpoint == [{"resource": "https://cognitiveservices.azure.com", "header": "identity-secret"}]
