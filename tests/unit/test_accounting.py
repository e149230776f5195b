"""What a caller is charged, through the whole pipeline in-process, against simulators on loopback ports.

Failover: a try that reached a backend and then timed out or was cut may be billed by Azure, so its estimate
stays charged on top of the answer that came; a refused connection never reached anything and costs nothing.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest

from aigw.serve import BackgroundServers
from gateway_core.app import Gateway
from gateway_core.clock import ManualClock
from gateway_core.config import config_from_dict, sha256_hex
from gateway_core.context import GatewayRequest, GatewayResponse, Principal, RequestContext
from gateway_core.errors import TokenLimitExceeded
from gateway_core.simulator.app import SimulatorApp
from gateway_core.simulator.settings import Fault, SimConfig
from gateway_core.storage.memory import MemoryCounters
from gateway_core.tokens.counting import chat_prompt_tokens
from gateway_core.tokens.encodings import encoding

START = 1_795_000_020.0  # the start of a minute
KEY = {"api-key": "k"}
HELLO = [{"role": "user", "content": "hello"}]  # 8 prompt tokens in o200k_base with the chat framing
ESTIMATE = 8 + 50  # prompt + max_tokens
ACTUAL = 8 + 10  # the simulators' usage: 10 completion tokens


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def requests_seen(url: str) -> int:
    # A plain blocking call is fine: the simulators run on their own thread's event loop.
    return len(httpx.get(url + "/_sim/requests").json()["requests"])


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, str]]:
    servers = BackgroundServers()

    def sim(*faults: Fault) -> str:
        return f"http://127.0.0.1:{servers.serve(SimulatorApp(SimConfig(completion_tokens=10, faults=faults)))}"

    yield {
        "healthy": sim(),
        "drop": sim(Fault(kind="drop")),  # sends half an answer, then aborts the connection
        "slow": sim(Fault(kind="slow", extra_latency_ms=5000)),
        "refused": f"http://127.0.0.1:{closed_port()}",
    }
    servers.stop()


@pytest.fixture
async def make(sims: dict[str, str]) -> AsyncIterator[Any]:
    made: list[Gateway] = []

    async def build(*names: str, tpm: int = 100_000) -> Gateway:
        backends = [
            {
                "name": name,
                "url": sims[name],
                "priority": i + 1,
                "timeout_s": 1.0 if name == "slow" else 30,
                "auth": {"type": "none"},
                "simulator": True,  # steered with x-aigw-sim-* headers
                "deployments": ["gpt-4o"],
            }
            for i, name in enumerate(names)
        ]
        config = config_from_dict(
            {
                "backends": backends,
                "keys": [{"name": "k", "sha256": sha256_hex("k"), "user": "u"}],
                "limits": {"rules": [{"name": "tpm", "key": "user", "tokens_per_minute": tpm}]},
                "stores": {"counters": "memory://", "health": "memory://"},
            }
        )
        gateway = Gateway(config, clock=ManualClock(START))
        await gateway.start()
        made.append(gateway)
        return gateway

    yield build
    for gateway in made:
        await gateway.close()


async def call(gateway: Gateway, headers: dict[str, str] | None = None, **body: Any) -> GatewayResponse:
    raw = orjson.dumps({"model": "gpt-4o", "messages": HELLO, "max_tokens": 50, **body})
    return await gateway.handle(
        GatewayRequest("POST", "/v1/chat/completions", {}, {**KEY, **(headers or {})}, raw, len(raw))
    )


async def charged(gateway: Gateway) -> int:
    await gateway.tasks.drain()
    assert isinstance(gateway.counters, MemoryCounters)
    return await gateway.counters.get("tpm:tpm:default/u", int(START))


@pytest.mark.parametrize(
    ("first", "charge"),
    [("drop", ESTIMATE + ACTUAL), ("slow", ESTIMATE + ACTUAL), ("refused", ACTUAL)],
    ids=["dropped-after-send", "read-timeout", "connection-refused"],
)
async def test_failover_keeps_the_estimate_of_a_try_that_reached_a_backend(make: Any, first: str, charge: int) -> None:
    gateway = await make(first, "healthy")
    response = await call(gateway)
    assert response.status == 200 and response.header("x-aigw-backend") == "healthy"
    assert response.header("x-aigw-attempts") == "2"
    assert response.header("x-aigw-tokens-consumed") == str(charge)
    assert await charged(gateway) == charge


async def test_a_request_whose_every_try_was_cut_stays_charged_for_each(make: Any) -> None:
    gateway = await make("drop", "slow", "refused")
    response = await call(gateway)
    assert response.status == 502
    assert response.header("x-aigw-tokens-consumed") == str(2 * ESTIMATE)  # the error says what it cost
    assert await charged(gateway) == 2 * ESTIMATE  # the refused connection never reached a backend


async def test_a_stream_after_a_cut_try_is_charged_its_usage_plus_the_cut_estimate(make: Any) -> None:
    gateway = await make("slow", "healthy")
    response = await call(gateway, stream=True)
    assert response.status == 200 and response.stream is not None
    assert [chunk async for chunk in response.stream][-1].endswith(b"data: [DONE]\n\n")
    assert await charged(gateway) == ESTIMATE + ACTUAL


async def test_a_stream_the_backend_cuts_midway_stays_charged_at_least_its_estimate(make: Any) -> None:
    gateway = await make("drop")  # streams half its words, then aborts the connection
    response = await call(gateway, stream=True)
    assert response.status == 200 and response.stream is not None
    body = b"".join([chunk async for chunk in response.stream])
    assert b'"content":"' in body and b"backend_unreachable" in body  # some words, then the error event
    assert await charged(gateway) == ESTIMATE  # not the prompt plus the few words that passed


async def test_a_stream_the_client_leaves_is_charged_what_passed(make: Any) -> None:
    gateway = await make("healthy")
    response = await call(gateway, stream=True)
    assert response.stream is not None
    await anext(response.stream)
    await response.stream.aclose()  # type: ignore[attr-defined]
    assert 8 <= await charged(gateway) < ESTIMATE  # the gateway hung up: counted from the text, as before


async def test_a_client_that_leaves_while_the_backend_generates_stays_charged_its_estimate(
    make: Any, sims: dict[str, str]
) -> None:
    gateway = await make("healthy")
    seen = requests_seen(sims["healthy"])
    pending = asyncio.create_task(call(gateway, {"x-aigw-sim-latency-ms": "60000"}))
    deadline = time.monotonic() + 15
    while requests_seen(sims["healthy"]) == seen:  # the simulator records the request as it starts generating
        assert time.monotonic() < deadline, "the request never reached the backend"
        await asyncio.sleep(0.02)
    pending.cancel()  # what the host does when the client disconnects
    with pytest.raises(asyncio.CancelledError):
        await pending
    assert await charged(gateway) == ESTIMATE  # the backend got the request and may bill it; was 0


async def test_a_backend_that_ignores_stream_options_is_counted_from_the_stream(make: Any) -> None:
    gateway = await make("healthy")
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    # The gateway asks for usage (a recent api-version); this backend ignores the request, as some do.
    response = await call(gateway, {"x-aigw-sim-no-usage": "1"}, stream=True, tools=tools, tool_choice="required")
    assert response.stream is not None
    events = [e[6:] for e in b"".join([c async for c in response.stream]).split(b"\n\n") if e.startswith(b"data: {")]
    arguments = "".join(
        tool_call["function"].get("arguments", "")
        for e in events
        for choice in orjson.loads(e)["choices"]
        for tool_call in choice["delta"].get("tool_calls", ())
    )
    assert arguments.startswith('{"text": ')
    counted = await charged(gateway)
    answer = await call(gateway, tools=tools, tool_choice="required")  # the same answer, with the backend's usage
    completion = orjson.loads(answer.body)["usage"]["completion_tokens"]
    prompt = chat_prompt_tokens({"messages": HELLO, "tools": tools}, encoding("o200k_base"))
    assert counted == prompt + completion  # before: the prompt alone, the arguments counted as nothing


async def test_gateway_embed_is_admitted_and_settled_under_the_callers_rules(make: Any, sims: dict[str, str]) -> None:
    gateway = await make("healthy", tpm=5)
    raw = orjson.dumps({"model": "gpt-4o", "messages": HELLO})
    caller = RequestContext(GatewayRequest("POST", "/v1/chat/completions", {}, KEY, raw, len(raw)), "req-1", START)
    caller.principal = Principal(user="u", tenant="default")
    assert len(await gateway.embed("gpt-4o", "three little words", caller)) > 0
    assert await charged(gateway) == 3  # the backend's usage for the embedded text, charged to user u
    seen = requests_seen(sims["healthy"])
    with pytest.raises(TokenLimitExceeded):  # 3 more would pass the rule's 5: refused before the backend
        await gateway.embed("gpt-4o", "three little words", caller)
    assert requests_seen(sims["healthy"]) == seen
    assert await charged(gateway) == 3
