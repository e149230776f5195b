"""README claims about what reaches a backend and when a request moves on to the next one, proven against
tests/upstream.py's recorders (which keep every request they received) through Gateway.handle.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

from gateway_core.app import Gateway
from gateway_core.config import config_from_dict, sha256_hex
from gateway_core.context import GatewayRequest, GatewayResponse
from tests.inprocess import running
from tests.upstream import Recorder, serve_recorders

KEY = {"api-key": "fwd-key"}
HELLO = {"messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture(scope="module")
def recorders() -> Iterator[list[tuple[str, Recorder]]]:
    with serve_recorders(3) as made:
        yield made


@pytest.fixture(autouse=True)
def fresh(recorders: list[tuple[str, Recorder]]) -> None:
    for _, recorder in recorders:
        recorder.reset()


@asynccontextmanager
async def gateway(
    recorders: list[tuple[str, Recorder]], backend: dict[str, Any] | None = None, **routing: Any
) -> AsyncIterator[Gateway]:
    """Backends r0, r1, r2 in that priority order; ``backend`` adds settings to each."""
    config = config_from_dict(
        {
            "backends": [
                {
                    "name": f"r{i}",
                    "url": url,
                    "priority": i,
                    "auth": {"type": "none"},
                    "deployments": ["gpt-4o"],
                    **(backend or {}),
                }
                for i, (url, _) in enumerate(recorders)
            ],
            "keys": [{"name": "k", "sha256": sha256_hex("fwd-key"), "user": "u"}],
            "routing": {"probe": {"enabled": False}, **routing},
            "stores": {"health": "memory://"},
        }
    )
    async with running(config) as gw:
        yield gw


async def v1(gw: Gateway, headers: dict[str, str] | None = None, **body: Any) -> GatewayResponse:
    raw = orjson.dumps({"model": "gpt-4o", **HELLO, **body})
    return await gw.handle(
        GatewayRequest("POST", "/v1/chat/completions", {}, {**KEY, **(headers or {})}, raw, len(raw))
    )


def tries(recorders: list[tuple[str, Recorder]]) -> list[int]:
    return [len(recorder.received) for _, recorder in recorders]


async def test_trace_headers_and_request_id_are_forwarded_and_nothing_else_of_the_clients(
    recorders: list[tuple[str, Recorder]],
) -> None:
    sent = {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "congo=t61rcWkgMzE",
        "x-request-id": "req-abc-123",
        "cookie": "session=secret",
        "x-forwarded-for": "203.0.113.9",
        "x-custom": "mine",
        "authorization": "Bearer other",
    }
    async with gateway(recorders) as gw:
        response = await v1(gw, sent)
    assert response.status == 200 and response.header("x-request-id") == "req-abc-123"
    seen = recorders[0][1].received[0].headers
    for name in ("traceparent", "tracestate", "x-request-id"):
        assert seen.get(name) == sent[name], name
    assert not {"cookie", "x-forwarded-for", "x-custom", "authorization", "api-key"} & set(seen)


async def test_v1_sends_the_backends_configured_api_version(recorders: list[tuple[str, Recorder]]) -> None:
    async with gateway(recorders, {"api_version": "2025-01-01-preview"}) as gw:
        assert (await v1(gw)).status == 200
    received = recorders[0][1].received[0]
    assert received.path == "/openai/deployments/gpt-4o/chat/completions"
    assert received.query_string == "api-version=2025-01-01-preview"


async def test_a_v1_stream_to_a_backend_on_an_old_api_version_gets_no_stream_options(
    recorders: list[tuple[str, Recorder]],
) -> None:
    # Azure answers 400 to stream_options before 2024-09-01, whichever surface the client used.
    async with gateway(recorders, {"api_version": "2024-06-01"}) as gw:
        response = await v1(gw, stream=True)
        assert response.status == 200 and response.stream is not None
        _ = [chunk async for chunk in response.stream]
    assert recorders[0][1].received[0].query_string == "api-version=2024-06-01"
    assert "stream_options" not in orjson.loads(recorders[0][1].received[0].body)


async def test_a_408_fails_over_to_the_next_backend(recorders: list[tuple[str, Recorder]]) -> None:
    recorders[0][1].status = 408
    async with gateway(recorders) as gw:
        response = await v1(gw)
    assert response.status == 200 and response.header("x-aigw-backend") == "r1"
    assert response.header("x-aigw-attempts") == "2" and tries(recorders) == [1, 1, 0]


async def test_a_timeout_fails_over_to_the_next_backend(recorders: list[tuple[str, Recorder]]) -> None:
    recorders[0][1].hang = True
    async with gateway(recorders, {"timeout_s": 0.5}) as gw:
        response = await v1(gw)
    assert response.status == 200 and response.header("x-aigw-backend") == "r1"
    assert response.header("x-aigw-attempts") == "2" and tries(recorders) == [1, 1, 0]


async def test_max_attempts_bounds_the_tries(recorders: list[tuple[str, Recorder]]) -> None:
    for _, recorder in recorders:
        recorder.status = 500
    async with gateway(recorders, max_attempts=2) as gw:
        response = await v1(gw)
    assert response.status == 500 and response.header("x-aigw-attempts") == "2"
    assert tries(recorders) == [1, 1, 0]


async def test_budget_s_caps_each_try_and_ends_the_failover(recorders: list[tuple[str, Recorder]]) -> None:
    for _, recorder in recorders:
        recorder.hang = True
    # Each backend's own timeout (300 s) is far beyond the budget: the budget alone ends the tries.
    async with gateway(recorders, budget_s=1.0) as gw:
        response = await v1(gw)
    assert response.status == 504, response.body
    assert orjson.loads(response.body)["error"]["type"]
    assert int(response.header("x-aigw-attempts") or "0") >= 1
