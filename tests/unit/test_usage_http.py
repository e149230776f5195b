"""Usage records over real HTTP: the ASGI adapter served by uvicorn on loopback, in front of the simulator, called
with the official openai SDK (and httpx where a client must misbehave): what an application's requests leave."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import httpx
import openai
import pytest
from openai import AzureOpenAI

from aigw.asgi import GatewayASGI
from aigw.serve import BackgroundServers
from gateway_core.app import Gateway
from gateway_core.config import config_from_dict, sha256_hex
from gateway_core.simulator.app import SimulatorApp
from gateway_core.simulator.settings import SimConfig, SimDeployment
from gateway_core.usage.record import UNAUTHENTICATED
from tests.usage_sink import ListSink

KEY = "usage-http-key"
API_VERSION = "2024-10-21"


@dataclass
class Served:
    url: str
    gateway: Gateway
    sink: ListSink
    servers: BackgroundServers

    def close(self) -> None:
        """Close the gateway (hands over aggregated refusals, closes the sink)."""
        self.servers.run(self.gateway.close())


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[BackgroundServers, str]]:
    servers = BackgroundServers()
    slow = SimDeployment(name="slow", tokens_per_s=100, completion_tokens=300)  # a 3 s stream
    names = ("gpt-4o", "text-embedding-3-small")
    deployments = (*(SimDeployment(name=n) for n in names), slow)
    port = servers.serve(SimulatorApp(SimConfig(region="swedencentral", deployments=deployments)))
    yield servers, f"http://127.0.0.1:{port}"
    servers.stop()


@pytest.fixture
def served(servers: tuple[BackgroundServers, str]) -> Iterator[Served]:
    background, sim = servers
    config = config_from_dict(
        {
            "server": {"max_body_bytes": 65536},
            "backends": [
                {
                    "name": "sweden",
                    "url": sim,
                    "region": "swedencentral",
                    "auth": {"type": "none"},
                    "simulator": True,
                    "deployments": ["gpt-4o", "text-embedding-3-small", {"name": "slow", "model": "gpt-4o"}],
                }
            ],
            "keys": [{"name": "app", "sha256": sha256_hex(KEY), "user": "app-user", "tenant": "fabrikam"}],
            "stores": {"health": "memory://"},
        }
    )
    sink = ListSink()
    gateway = Gateway(config, usage_sink=sink)
    background.run(gateway.start())
    port = background.serve(GatewayASGI(gateway))
    served = Served(f"http://127.0.0.1:{port}", gateway, sink, background)
    yield served
    if not gateway.closed:
        served.close()


def azure(url: str, key: str = KEY) -> AzureOpenAI:
    return AzureOpenAI(azure_endpoint=url, api_key=key, api_version=API_VERSION, max_retries=0)


def gpt_4o_micro_usd(prompt: int, completion: int, cached: int) -> int:
    exact = (prompt - cached) * Decimal("2.50") + cached * Decimal("1.25") + completion * Decimal("10.00")
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def send_head(served: Served, *headers: str, body: bytes = b"", answer: bool = True) -> bytes:
    """A chat POST's head with the caller's key and ``headers`` (then ``body``) on a raw socket; the first bytes of
    the answer (none if ``answer`` is False: the socket is closed at once, the client gone)."""
    host, port = served.url.removeprefix("http://").split(":")
    lines = ["POST /openai/deployments/gpt-4o/chat/completions HTTP/1.1", "host: x", f"api-key: {KEY}"]
    head = "\r\n".join([*lines, "content-type: application/json", *headers]) + "\r\n\r\n"
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head.encode() + body)
        return sock.recv(4096) if answer else b""


def key_lookups(served: Served, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The keys the gateway looks up from now on, one entry per lookup."""
    calls: list[str] = []
    principal_for = served.gateway._auth.principal_for

    def counted(headers: Any) -> Any:
        calls.append(headers.get("api-key", ""))
        return principal_for(headers)

    monkeypatch.setattr(served.gateway._auth, "principal_for", counted)
    return calls


def test_sdk_chat_with_cached_input_is_recorded_at_its_exact_cost(served: Served) -> None:
    raw = azure(served.url).chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Count the lighthouses along the northern coast, please."}],
        extra_headers={"x-aigw-sim-cached-tokens": "7"},
    )
    completion = raw.parse()
    [record] = served.sink.wait_for(1)
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 7
    assert record.request_id == raw.headers["x-request-id"]
    assert (record.tenant, record.user, record.key_id, record.region) == (
        "fabrikam",
        "app-user",
        "app",
        "swedencentral",
    )
    assert (record.prompt_tokens, record.completion_tokens, record.cached_prompt_tokens) == (
        usage.prompt_tokens,
        usage.completion_tokens,
        7,
    )
    assert record.cost_micro_usd == gpt_4o_micro_usd(usage.prompt_tokens, usage.completion_tokens, 7)


def test_sdk_stream_is_recorded_after_its_end_at_its_exact_cost(served: Served) -> None:
    stream = azure(served.url).chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Stream a haiku about tides."}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    usage = chunks[-1].usage
    assert usage is not None
    [record] = served.sink.wait_for(1)
    assert record.stream and record.token_source == "backend" and record.error_code is None
    assert (record.prompt_tokens, record.completion_tokens) == (usage.prompt_tokens, usage.completion_tokens)
    assert record.cost_micro_usd == gpt_4o_micro_usd(usage.prompt_tokens, usage.completion_tokens, 0)
    assert record.ttfb_ms is not None and record.latency_ms >= record.ttfb_ms


def test_sdk_embeddings_are_recorded_at_their_exact_cost(served: Served) -> None:
    result = azure(served.url).embeddings.create(model="text-embedding-3-small", input="tide " * 900)
    [record] = served.sink.wait_for(1)
    tokens = result.usage.prompt_tokens
    assert record.prompt_tokens == tokens and record.deployment == "text-embedding-3-small"
    exact = tokens * Decimal("0.02")
    assert record.cost_micro_usd == int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP)) > 0


def test_a_client_that_leaves_mid_stream_leaves_one_record(served: Served) -> None:
    body = {"messages": [{"role": "user", "content": "A long story, please."}], "stream": True}
    url = f"{served.url}/openai/deployments/slow/chat/completions?api-version={API_VERSION}"
    with httpx.Client() as client, client.stream("POST", url, json=body, headers={"api-key": KEY}) as response:
        assert response.status_code == 200
        next(response.iter_raw())  # the first chunk, then the client hangs up
    [record] = served.sink.wait_for(1)
    assert record.error_code == "client_disconnected" and record.token_source == "counted"
    assert 0 < record.completion_tokens < 300
    served.close()
    assert len(served.sink.records) == 1  # not a second one at shutdown


def test_sdk_errors_are_recorded_and_unauthenticated_ones_aggregated(served: Served) -> None:
    with pytest.raises(openai.AuthenticationError):
        azure(served.url, key="not-a-key").chat.completions.create(model="gpt-4o", messages=[])
    with pytest.raises(openai.AuthenticationError):
        azure(served.url, key="still-not-a-key").chat.completions.create(model="gpt-4o", messages=[])
    with pytest.raises(openai.NotFoundError):
        azure(served.url).chat.completions.create(model="no-such-deployment", messages=[])
    records = served.sink.wait_for(1)
    assert [(r.status, r.error_code, r.user) for r in records] == [(404, "DeploymentNotFound", "app-user")]
    served.close()
    [aggregated] = [r for r in served.sink.records if r.tenant == UNAUTHENTICATED]
    assert (aggregated.status, aggregated.error_code, aggregated.count) == (401, "invalid_api_key", 2)
    assert aggregated.client_ip == "127.0.0.1" and aggregated.user == UNAUTHENTICATED


def test_a_body_refused_on_its_announced_length_is_recorded_for_the_caller(served: Served) -> None:
    # The adapter refuses it from the head (Content-Length over max_body_bytes) without reading the body.
    assert send_head(served, "content-length: 1000000").startswith(b"HTTP/1.1 413")
    [record] = served.sink.wait_for(1)
    assert (record.status, record.error_code, record.user) == (413, "payload_too_large", "app-user")


def test_a_request_is_authenticated_once_with_one_request_id(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    # The head is checked before the body is read (401/404 without buffering a body); the rest of the pipeline
    # then runs on that same context: the caller is not looked up again, and no second request id is made.
    calls = key_lookups(served, monkeypatch)
    raw = azure(served.url).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "once"}]
    )
    assert calls == [KEY]
    [record] = served.sink.wait_for(1)
    assert record.request_id == raw.headers["x-request-id"] and record.user == "app-user"
    models = httpx.get(f"{served.url}/openai/models", headers={"api-key": KEY}, params={"api-version": API_VERSION})
    assert models.status_code == 200 and calls == [KEY, KEY]


def test_a_refusal_after_the_head_is_recorded_on_its_checked_context(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 413 on the announced length: the key was looked up once, on the head, and the record is the caller's.
    calls = key_lookups(served, monkeypatch)
    assert send_head(served, "content-length: 1000000", "x-request-id: big-one").startswith(b"HTTP/1.1 413")
    [record] = served.sink.wait_for(1)
    assert (record.status, record.request_id, record.user) == (413, "big-one", "app-user") and calls == [KEY]


def test_a_caller_that_leaves_mid_body_is_recorded(served: Served) -> None:
    # Authenticated on its head, then gone before its body ended: one record (499), never silence.
    send_head(served, "content-length: 46", body=b'{"messages"', answer=False)
    [record] = served.sink.wait_for(1)
    assert (record.status, record.error_code, record.user) == (499, "client_disconnected", "app-user")
