"""The Functions app in-process: its bindings, and its HTTP trigger running the same pipeline."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway_core.simulator.records import fingerprint
from tests.servers import BACKEND_KEY, CLIENT_KEY, GATEWAY_ENV, gateway_config, write_yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def functions() -> dict[str, Any]:
    """The app's functions by name; ``get_functions`` indexes the app and may be called only once."""
    import function_app

    return {str(f.get_function_name()): f for f in function_app.app.get_functions()}


@pytest.fixture
async def trigger(
    functions: dict[str, Any], sim_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Any]:
    # The host reads its config when it builds the gateway: on first use in each event loop.
    monkeypatch.setenv("AIGW_CONFIG", str(write_yaml(tmp_path / "gateway.yaml", gateway_config(sim_url))))
    for name, value in GATEWAY_ENV.items():
        monkeypatch.setenv(name, value)
    yield functions["gateway"].get_user_function()
    import function_app

    await function_app.host.close()


def starlette_request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Request:
    path_only, _, query = path.partition("?")
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": method,
        "path": path_only,
        "raw_path": path_only.encode(),
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 7071),
        "scheme": "http",
        "root_path": "",
        "http_version": "1.1",
    }
    return Request(scope, receive)


async def body_of(response: Response) -> bytes:
    if isinstance(response, StreamingResponse):
        iterator: AsyncIterator[Any] = response.body_iterator  # type: ignore[assignment]
        return b"".join([c if isinstance(c, bytes) else c.encode() async for c in iterator])
    return bytes(response.body)


def test_bindings_and_host_json(functions: dict[str, Any]) -> None:
    assert set(functions) == {"gateway", "health"}
    timer = orjson.loads(functions["health"].get_raw_bindings()[0])
    assert timer["type"] == "timerTrigger" and timer["schedule"] == "*/30 * * * * *"
    bindings = orjson.loads(functions["gateway"].get_raw_bindings()[0])
    assert bindings["type"] == "httpTrigger"
    assert bindings["route"] == "{*path}"
    assert bindings["authLevel"].lower() == "anonymous"
    host = orjson.loads((ROOT / "host.json").read_bytes())
    assert host["extensions"]["http"]["routePrefix"] == ""


async def test_http_trigger_serves_chat_json(trigger: Any) -> None:
    body = orjson.dumps({"messages": [{"role": "user", "content": "hi"}]})
    request = starlette_request(
        "POST",
        "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
        body,
        {"api-key": CLIENT_KEY, "content-type": "application/json", "content-length": str(len(body))},
    )
    response = await trigger(request)
    payload = await body_of(response)
    assert response.status_code == 200, payload
    assert orjson.loads(payload)["object"] == "chat.completion"
    assert response.headers["x-aigw-backend"] == "sim-east"
    assert BACKEND_KEY.encode() not in payload


async def test_http_trigger_streams_sse(trigger: Any) -> None:
    body = orjson.dumps({"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    request = starlette_request("POST", "/v1/chat/completions", body, {"authorization": f"Bearer {CLIENT_KEY}"})
    response = await trigger(request)
    assert isinstance(response, StreamingResponse)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = (await body_of(response)).split(b"\n\n")
    assert events[-2] == b"data: [DONE]"
    assert sum(1 for e in events if e.startswith(b"data: {")) >= 3


async def test_http_trigger_errors_are_openai_style(trigger: Any) -> None:
    response = await trigger(starlette_request("POST", "/v1/chat/completions", b"{}"))
    assert response.status_code == 401
    error = orjson.loads(await body_of(response))["error"]
    assert error["type"] == "authentication_error"
    healthz = await trigger(starlette_request("GET", "/healthz"))
    assert healthz.status_code == 200


async def test_timer_trigger_probes_every_backend(functions: dict[str, Any], trigger: Any, sim_url: str) -> None:
    from azure.functions.timer import TimerRequest

    from tests.servers import clear_sim_requests, sim_requests

    clear_sim_requests(sim_url)
    await functions["health"].get_user_function()(TimerRequest(past_due=False))
    (probe,) = sim_requests(sim_url)
    assert probe["method"] == "GET" and probe["path"] == "/openai/models"
    assert probe["headers"]["api-key"] == fingerprint(BACKEND_KEY)


async def test_http_trigger_refuses_an_unauthenticated_caller_without_reading_its_body(trigger: Any) -> None:
    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read before the caller was authenticated")

    scope = starlette_request("POST", "/v1/chat/completions").scope
    scope["headers"] = [(b"content-length", b"10000000")]
    response = await trigger(Request(scope, receive))
    assert response.status_code == 401
