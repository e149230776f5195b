"""README claims about the simulator's faults: `rate`, `slow`, and a `tpm_limit` for every deployment."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from aigw.serve import BackgroundServers
from gateway_core.simulator.app import SimulatorApp
from gateway_core.simulator.settings import SimConfig

CHAT = "/openai/deployments/{d}/chat/completions?api-version=2024-10-21"


@pytest.fixture
def servers() -> Iterator[BackgroundServers]:
    running = BackgroundServers()
    yield running
    running.stop()


def start(servers: BackgroundServers, **config: Any) -> str:
    return f"http://127.0.0.1:{servers.serve(SimulatorApp(SimConfig.model_validate(config)))}"


HTTP = httpx.Client(timeout=30)  # one client: building one per request costs ~0.1 s of TLS setup


def ask(url: str, deployment: str = "gpt-4o") -> httpx.Response:
    body = {"messages": [{"role": "user", "content": "hi"}]}  # 8 prompt + 16 completion = 24 tokens
    return HTTP.post(url + CHAT.format(d=deployment), json=body)


def away_from_a_minute_boundary() -> None:
    """The simulator's TPM window is the wall clock's minute (it has no injectable clock): start a test that
    needs one window at least 5 s before the next minute, so it cannot straddle two."""
    left = 60 - time.time() % 60
    if left < 5:
        time.sleep(left + 0.1)


def test_a_fault_rate_hits_about_that_share_of_requests(servers: BackgroundServers) -> None:
    sim = start(servers, faults=[{"kind": "500", "rate": 0.25}], seed=7)
    statuses = [ask(sim).status_code for _ in range(200)]
    assert set(statuses) == {200, 500}
    assert 0.15 < statuses.count(500) / 200 < 0.35  # seeded: the same share on every run
    never = start(servers, faults=[{"kind": "500", "rate": 0.0}])
    assert {ask(never).status_code for _ in range(20)} == {200}


def test_a_slow_fault_answers_after_its_extra_latency(servers: BackgroundServers) -> None:
    sim = start(servers, faults=[{"kind": "slow", "extra_latency_ms": 400}])
    started = time.monotonic()
    response = ask(sim)
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"]
    assert time.monotonic() - started >= 0.4  # a lower bound only: a slow machine makes it later, never sooner


def test_a_global_tpm_limit_applies_to_each_deployment_on_its_own(servers: BackgroundServers) -> None:
    sim = start(servers, tpm_limit=60)
    away_from_a_minute_boundary()
    assert [ask(sim).status_code for _ in range(3)] == [200, 200, 429]  # 24 + 24 fit in 60, a third does not
    refused = ask(sim)
    assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 60
    assert ask(sim, "gpt-4o-mini").status_code == 200  # its own 60 tokens
