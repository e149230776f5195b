"""`aigw serve` as a newcomer runs it: the demo (also with two workers) and zero-config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from openai import AzureOpenAI, OpenAI

from tests.servers import BACKEND_KEY, run_aigw


@pytest.mark.parametrize("workers", ["1", "2"])
def test_demo_serves_its_three_deployments_to_the_openai_sdk(workers: str, tmp_path: Path) -> None:
    # The demo keeps its counters in ./.aigw/ of the directory it runs in.
    with run_aigw(["serve", "--demo", "--workers", workers], cwd=tmp_path) as demo:
        client = AzureOpenAI(azure_endpoint=demo.url, api_key="aigw-demo-key", api_version="2024-10-21", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Hello"}]
        )
        assert raw.parse().model == "gpt-4o-2024-08-06"
        assert raw.headers["x-aigw-backend"] == "sim-eastus"  # priority 1
        assert raw.headers["x-ratelimit-limit-tokens"] == "50000"
        assert int(raw.headers["x-aigw-quota-remaining-tokens"]) < 1_000_000
        assert int(raw.headers["x-aigw-tokens-consumed"]) == raw.parse().usage.total_tokens  # type: ignore[union-attr]
        again = client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Hello"}], temperature=0
        )
        assert again.headers["x-aigw-cache"] == "MISS"
        other_tenant = AzureOpenAI(
            azure_endpoint=demo.url, api_key="aigw-demo-key-2", api_version="2024-10-21", max_retries=0
        ).chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Hello"}], temperature=0
        )
        assert other_tenant.headers["x-aigw-cache"] == "MISS"  # tenant scope: demo-2 does not see demo's entry
        hit = client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Hello"}], temperature=0
        )
        assert hit.headers["x-aigw-cache"] == "HIT"
        mini = OpenAI(base_url=demo.url + "/v1", api_key="aigw-demo-admin", max_retries=0)
        assert mini.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]).choices
        vectors = client.embeddings.create(model="text-embedding-3-small", input="hello")
        assert len(vectors.data[0].embedding) == 1536
        models = httpx.get(demo.url + "/v1/models", headers={"api-key": "aigw-demo-key"}).json()
        assert [m["id"] for m in models["data"]] == ["gpt-4o", "gpt-4o-mini", "text-embedding-3-small"]


def test_zero_config_proxies_any_deployment_with_env_keys(sim_url: str) -> None:
    env = {"AZURE_OPENAI_ENDPOINT": sim_url, "AZURE_OPENAI_API_KEY": BACKEND_KEY, "AIGW_API_KEYS": "k-one,k-two"}
    with run_aigw(["serve"], env=env) as gateway:
        client = AzureOpenAI(azure_endpoint=gateway.url, api_key="k-two", api_version="2024-10-21", max_retries=0)
        assert client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]).choices
        # The simulator knows four deployments; the backend, not the gateway, says what exists.
        response = httpx.post(
            gateway.url + "/openai/deployments/unknown-here/chat/completions?api-version=2024-10-21",
            json={"messages": []},
            headers={"api-key": "k-one"},
        )
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "DeploymentNotFound"
        assert response.headers["x-aigw-backend"] == "default"


def test_serve_refuses_to_start_without_client_keys(sim_url: str) -> None:
    env = {**os.environ, "AZURE_OPENAI_ENDPOINT": sim_url, "AZURE_OPENAI_API_KEY": BACKEND_KEY}
    env.pop("AIGW_API_KEYS", None)
    env.pop("AIGW_CONFIG", None)
    result = subprocess.run(
        [sys.executable, "-m", "aigw.cli", "serve", "--port", "0"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "no client key is configured" in result.stderr and "--no-auth" in result.stderr


def test_serve_with_no_config_at_all_says_what_to_do() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_OPENAI", "AIGW_"))}
    result = subprocess.run(
        [sys.executable, "-m", "aigw.cli", "serve", "--port", "0"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "--config" in result.stderr and "--demo" in result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_stops_the_gateway_quietly(workers: str, sim_url: str) -> None:
    import signal

    env = {"AZURE_OPENAI_ENDPOINT": sim_url, "AZURE_OPENAI_API_KEY": BACKEND_KEY, "AIGW_API_KEYS": "k1"}
    with run_aigw(["serve", "--workers", workers], env=env) as gw:
        assert httpx.get(f"{gw.url}/healthz", timeout=30).status_code == 200
        gw.process.send_signal(signal.SIGINT)
        assert gw.process.wait(timeout=60) == 0
    assert "Traceback" not in "".join(gw.output), "".join(gw.output)
