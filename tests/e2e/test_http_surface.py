"""The gateway's HTTP contract at the byte level: errors, limits, liveness, status, disconnects."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import (
    BACKEND_KEY,
    CLIENT_KEY,
    GATEWAY_ENV,
    THIRD_KEY,
    clear_sim_requests,
    gateway_config,
    run_aigw,
    sim_requests,
    write_yaml,
)

CHAT = {"messages": [{"role": "user", "content": "hi"}]}
AZURE_CHAT = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"


def error_of(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"]
    return dict(body["error"])


@pytest.fixture
def http(gateway_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway_url, headers={"api-key": CLIENT_KEY}, timeout=10) as client:
        yield client


def test_missing_key_is_401(gateway_url: str) -> None:
    response = httpx.post(gateway_url + AZURE_CHAT, json=CHAT)
    assert response.status_code == 401
    assert "api-key" in str(error_of(response)["message"])


def test_bearer_key_is_accepted_and_jwt_shaped_bearer_is_not_a_key(gateway_url: str) -> None:
    ok = httpx.post(gateway_url + AZURE_CHAT, json=CHAT, headers={"authorization": f"Bearer {CLIENT_KEY}"})
    assert ok.status_code == 200
    jwt = httpx.post(gateway_url + AZURE_CHAT, json=CHAT, headers={"authorization": "Bearer a.b.c"})
    assert jwt.status_code == 401
    assert "JWT" in str(error_of(jwt)["message"])


def test_malformed_json_is_400(http: httpx.Client) -> None:
    response = http.post(AZURE_CHAT, content=b'{"messages": [', headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert error_of(response)["type"] == "invalid_request_error"


@pytest.mark.parametrize("body", [b"[1, 2]", b"", b'{"stream": "yes", "messages": []}'])
def test_bad_bodies_are_400(http: httpx.Client, body: bytes) -> None:
    response = http.post(AZURE_CHAT, content=body)
    assert response.status_code == 400
    error_of(response)


def test_openai_surface_without_model_is_400(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 400
    assert error_of(response)["param"] == "model"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/openai/deployments/gpt-4o/images/generations?api-version=2024-10-21"),
        ("POST", "/v1/audio/transcriptions"),
        ("GET", "/v1/files"),
        ("POST", "/v1/batches"),
        ("POST", "/v1/responses"),
        ("GET", "/openai/realtime"),
    ],
)
def test_unserved_paths_are_404_naming_the_path(http: httpx.Client, method: str, path: str) -> None:
    response = http.request(method, path)
    assert response.status_code == 404
    assert path.split("?")[0] in str(error_of(response)["message"])


def test_healthz_needs_no_key(gateway_url: str) -> None:
    response = httpx.get(gateway_url + "/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_status_lists_backends_health_and_deployments(gateway_url: str, http: httpx.Client) -> None:
    assert httpx.get(gateway_url + "/status").status_code == 401
    http.post(AZURE_CHAT, json=CHAT)
    assert "backends" not in http.get("/status").json()  # alice is no admin: deployments only
    status = httpx.get(gateway_url + "/status", headers={"api-key": THIRD_KEY}).json()  # carol is
    (backend,) = status["backends"]
    assert backend["name"] == "sim-east" and backend["region"] == "eastus"
    assert backend["health"]["state"] == "healthy"
    assert "gpt-4o" in backend["deployments"]
    assert BACKEND_KEY not in json.dumps(status)


def test_model_and_deployment_lists(http: httpx.Client) -> None:
    models = http.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["gpt-4o", "gpt-4o-mini", "slow-stream", "text-embedding-3-small"]
    deployments = http.get("/openai/deployments").json()
    assert {d["id"] for d in deployments["data"]} == {m["id"] for m in models["data"]}


def test_stream_error_before_start_is_json(http: httpx.Client) -> None:
    response = http.post(AZURE_CHAT, json={**CHAT, "stream": True}, headers={"x-aigw-sim-fault": "429"})
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "429"


def test_dropped_backend_connection_is_502(http: httpx.Client) -> None:
    response = http.post(AZURE_CHAT, json=CHAT, headers={"x-aigw-sim-fault": "drop"})
    assert response.status_code == 502
    assert error_of(response)["code"] == "backend_unreachable"


def test_stream_dropped_mid_way_ends_with_an_sse_error_event(http: httpx.Client) -> None:
    with http.stream(
        "POST", AZURE_CHAT, json={**CHAT, "stream": True}, headers={"x-aigw-sim-fault": "drop"}
    ) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    last = json.loads(events[-1][len("data: ") :])
    assert last["error"]["code"] == "backend_unreachable"
    assert "[DONE]" not in events[-1]


def test_client_disconnect_cancels_the_upstream_stream(gateway_url: str, sim_url: str) -> None:
    clear_sim_requests(sim_url)
    url = gateway_url + "/openai/deployments/slow-stream/chat/completions?api-version=2024-10-21"
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", url, json={**CHAT, "stream": True}, headers={"api-key": CLIENT_KEY}) as response,
    ):
        first = next(response.iter_lines())
        assert first.startswith("data: ")
    # The simulator records how each stream ended; wait (bounded) for the abandoned one to be noticed.
    deadline = time.monotonic() + 5
    outcome = None
    while time.monotonic() < deadline and outcome is None:
        outcome = sim_requests(sim_url)[-1].get("outcome")
        if outcome is None:
            time.sleep(0.05)
    assert outcome == "client_disconnected"


def test_body_over_the_limit_is_413(sim_url: str, tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "g.yaml", gateway_config(sim_url, server={"max_body_bytes": 2048}))
    with run_aigw(["serve", "--config", str(config)], env=GATEWAY_ENV) as gateway:
        big = {"messages": [{"role": "user", "content": "x" * 4096}]}
        response = httpx.post(gateway.url + AZURE_CHAT, json=big, headers={"api-key": CLIENT_KEY})
        assert response.status_code == 413
        assert error_of(response)["code"] == "payload_too_large"
        small = httpx.post(gateway.url + AZURE_CHAT, json=CHAT, headers={"api-key": CLIENT_KEY})
        assert small.status_code == 200


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_backend_is_502_and_a_reachable_one_takes_over(sim_url: str, tmp_path: Path) -> None:
    dead = {
        "name": "dead",
        "url": f"http://127.0.0.1:{_closed_port()}",
        "priority": 0,
        "auth": {"type": "none"},
        "deployments": ["gpt-4o", "only-dead"],
    }
    base = gateway_config(sim_url)
    config = write_yaml(tmp_path / "g.yaml", {**base, "backends": [dead, *base["backends"]]})
    with run_aigw(["serve", "--config", str(config)], env=GATEWAY_ENV) as gateway:
        headers = {"api-key": CLIENT_KEY}
        only_dead = httpx.post(
            gateway.url + "/openai/deployments/only-dead/chat/completions?api-version=2024-10-21",
            json=CHAT,
            headers=headers,
        )
        assert only_dead.status_code == 502
        assert "dead" in str(error_of(only_dead)["message"])
        failover = httpx.post(gateway.url + AZURE_CHAT, json=CHAT, headers=headers)
        assert failover.status_code == 200
        assert failover.headers["x-aigw-backend"] == "sim-east"


def test_backend_timeout_is_504(sim_url: str, tmp_path: Path) -> None:
    base = gateway_config(sim_url)
    backend = {**base["backends"][0], "timeout_s": 0.3}
    config = write_yaml(tmp_path / "g.yaml", {**base, "backends": [backend]})
    with run_aigw(["serve", "--config", str(config)], env=GATEWAY_ENV) as gateway:
        response = httpx.post(
            gateway.url + AZURE_CHAT, json=CHAT, headers={"api-key": CLIENT_KEY, "x-aigw-sim-latency-ms": "3000"}
        )
        assert response.status_code == 504
        assert error_of(response)["code"] == "backend_timeout"
