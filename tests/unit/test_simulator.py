"""The simulator's own controls: runtime fault changes, its TPM limit, the probe listing."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from aigw.serve import BackgroundServers
from gateway_core.simulator.app import SimulatorApp
from gateway_core.simulator.settings import SimConfig, SimDeployment

CHAT = "/openai/deployments/{d}/chat/completions?api-version=2024-10-21"


@pytest.fixture
def sim() -> Iterator[str]:
    servers = BackgroundServers()
    app = SimulatorApp(SimConfig(deployments=(SimDeployment(name="gpt-4o"), SimDeployment(name="small", tpm_limit=60))))
    port = servers.serve(app)
    yield f"http://127.0.0.1:{port}"
    servers.stop()


def ask(url: str, deployment: str = "gpt-4o") -> httpx.Response:
    return httpx.post(url + CHAT.format(d=deployment), json={"messages": [{"role": "user", "content": "hi"}]})


def test_faults_flip_at_run_time_without_a_restart(sim: str) -> None:
    assert ask(sim).status_code == 200
    changed = httpx.post(sim + "/++/config", json={"faults": [{"kind": "429", "retry_after_s": 4}]})
    assert changed.status_code == 200 and changed.json()["faults"][0]["kind"] == "429"
    throttled = ask(sim)
    assert throttled.status_code == 429 and throttled.headers["retry-after"] == "4"
    assert httpx.get(sim + "/openai/models").status_code == 429  # probes see it too
    httpx.post(sim + "/++/config", json={"faults": [{"kind": "500"}]})
    assert ask(sim).status_code == 500
    httpx.post(sim + "/++/config", json={"faults": []})
    assert ask(sim).status_code == 200
    assert httpx.get(sim + "/openai/models").json()["data"][0]["id"] == "gpt-4o"
    bad = httpx.post(sim + "/++/config", json={"faults": [{"kind": "meteor"}]})
    assert bad.status_code == 400 and ask(sim).status_code == 200


def test_own_tokens_per_minute_limit(sim: str) -> None:
    answers = [ask(sim, "small") for _ in range(5)]  # 8 prompt + 16 completion = 24 tokens each, 60 a minute
    assert [a.status_code for a in answers][:2] == [200, 200]
    refused = answers[2]
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert ask(sim, "gpt-4o").status_code == 200  # other deployments are not limited
