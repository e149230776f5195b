"""In Azure (Functions, App Service) the gateway's identity is the user-assigned one named by AZURE_CLIENT_ID.

The App Service managed identity endpoint is stood in for by a tiny server on 127.0.0.1, found the way the
platform announces it (IDENTITY_ENDPOINT, IDENTITY_HEADER); it records which identity each token was for.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gateway_core.clock import SystemClock
from gateway_core.config import EntraAuth
from gateway_core.providers.credentials import EntraToken
from gateway_core.storage.cosmos import CosmosTarget
from gateway_core.store_urls import CosmosURL, parse_store_url

USER_ASSIGNED = "11111111-2222-3333-4444-555555555555"
OTHER = "99999999-8888-7777-6666-555555555555"


@pytest.fixture
async def identity_endpoint(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[dict[str, str]]]:
    asked: list[dict[str, str]] = []

    async def token(request: web.Request) -> web.Response:
        asked.append(dict(request.query))
        expires_on = str(int(time.time()) + 3600)
        answer = {"access_token": "t0ken", "expires_on": expires_on, "token_type": "Bearer"}
        return web.json_response({**answer, "resource": request.query.get("resource", "")})

    app = web.Application()
    app.router.add_get("/msi/token", token)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    for name in ("AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE", "MSI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"http://127.0.0.1:{port}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", "header-secret")
    monkeypatch.setenv("AZURE_CLIENT_ID", USER_ASSIGNED)
    try:
        yield asked
    finally:
        await runner.cleanup()


async def test_an_entra_backend_uses_the_identity_azure_client_id_names(
    identity_endpoint: list[dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    token = EntraToken(EntraAuth(type="entra"), SystemClock(), os.environ)
    try:
        assert ("authorization", "Bearer t0ken") in await token.headers()
    finally:
        await token.close()
    assert identity_endpoint[-1]["client_id"] == USER_ASSIGNED
    # A backend that names its own identity's variable gets that one.
    monkeypatch.setenv("OTHER_IDENTITY", OTHER)
    own = EntraToken(
        EntraAuth(type="entra", managed_identity_client_id_env="OTHER_IDENTITY"), SystemClock(), os.environ
    )
    try:
        await own.headers()
    finally:
        await own.close()
    assert identity_endpoint[-1]["client_id"] == OTHER


async def test_cosmos_without_a_key_uses_the_identity_azure_client_id_names(
    identity_endpoint: list[dict[str, str]],
) -> None:
    url = parse_store_url("cosmos://acct.documents.azure.com:443/aigw", "counters")
    assert isinstance(url, CosmosURL)
    client, credential = CosmosTarget(url, None).client()
    try:
        await credential.get_token("https://cosmos.azure.com/.default")
    finally:
        await client.close()
        await credential.close()
    assert identity_endpoint[-1]["client_id"] == USER_ASSIGNED
    assert identity_endpoint[-1]["resource"] == "https://cosmos.azure.com"
