"""README claims about a running `aigw serve`: it probes its backends in the background, and `GET /status`
shows each backend's state (healthy, open, half-open, throttled deployments) over HTTP.

Waits here poll for a condition with a generous deadline; nothing asserts how fast it happened.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SIM_CONFIG
from tests.servers import (
    GATEWAY_ENV,
    THIRD_KEY,
    clear_sim_requests,
    eventually,
    gateway_config,
    run_aigw,
    sim_requests,
    write_yaml,
)

CHAT = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
HELLO = {"messages": [{"role": "user", "content": "hello"}]}
ADMIN = {"api-key": THIRD_KEY}  # carol is an admin


@pytest.fixture(scope="module")
def own_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A simulator of this module's own: its faults are flipped here."""
    config = write_yaml(tmp_path_factory.mktemp("sim") / "sim.yaml", SIM_CONFIG)
    with run_aigw(["simulate", "--config", str(config)]) as sim:
        yield sim.url


def set_faults(sim: str, faults: list[dict[str, Any]]) -> None:
    assert httpx.post(sim + "/++/config", json={"faults": faults}).status_code == 200


def health(gateway: str) -> dict[str, Any]:
    (backend,) = httpx.get(gateway + "/status", headers=ADMIN).json()["backends"]
    return dict(backend["health"])


def test_serve_probes_every_backend_in_the_background(own_sim: str, tmp_path: Path) -> None:
    set_faults(own_sim, [])
    routing = {"probe": {"enabled": True, "interval_s": 1}}
    config = write_yaml(tmp_path / "g.yaml", gateway_config(own_sim, routing=routing))
    clear_sim_requests(own_sim)
    with run_aigw(["serve", "--config", str(config)], env=GATEWAY_ENV) as gateway:
        # No client request at all: the probes alone reach the backend, the listing of models.
        probes = eventually(lambda: [r for r in sim_requests(own_sim) if r["path"] == "/openai/models"])
        assert probes[0]["method"] == "GET"
        assert eventually(lambda: health(gateway.url)["probe"]["outcome"]) == "ok"
    assert not [r for r in sim_requests(own_sim) if r["path"].endswith("/chat/completions")]


def test_status_shows_each_state_over_http(own_sim: str, tmp_path: Path) -> None:
    set_faults(own_sim, [])
    routing = {"max_attempts": 1, "probe": {"enabled": False}, "breaker": {"failures": 1, "trip_s": 1}}
    config = write_yaml(tmp_path / "g.yaml", gateway_config(own_sim, routing=routing))
    with (
        run_aigw(["serve", "--config", str(config)], env=GATEWAY_ENV) as gateway,
        httpx.Client(base_url=gateway.url, headers=ADMIN, timeout=30) as http,
    ):
        assert http.post(CHAT, json=HELLO).status_code == 200
        assert health(gateway.url)["state"] == "healthy"
        set_faults(own_sim, [{"kind": "500"}])
        assert http.post(CHAT, json=HELLO).status_code == 500
        opened = health(gateway.url)
        assert opened["state"] == "open" and opened["open_until_unix_s"] and opened["last_status"] == 500
        assert http.post(CHAT, json=HELLO).status_code == 503  # nothing eligible while it is open
        eventually(lambda: health(gateway.url)["state"] == "half-open")  # after trip_s
        set_faults(own_sim, [])
        assert http.post(CHAT, json=HELLO).status_code == 200  # the half-open test request closes it
        assert health(gateway.url)["state"] == "healthy"
        set_faults(own_sim, [{"kind": "429", "retry_after_s": 30}])
        assert http.post(CHAT, json=HELLO).status_code == 429
        throttled = health(gateway.url)["throttled_deployments_until_unix_s"]
        assert list(throttled) == ["gpt-4o"] and throttled["gpt-4o"] > time.time()
    set_faults(own_sim, [])
