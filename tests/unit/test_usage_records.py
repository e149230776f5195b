"""Usage records through the whole pipeline, in-process (``Gateway.handle``) against a simulator on loopback:
one record per request, whatever the outcome, with tokens, cost and the refusal's code."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, cast

import orjson
import pytest

from aigw.serve import BackgroundServers
from aigw.usage_cli import render
from gateway_core.app import CheckedHead, Gateway
from gateway_core.clock import ManualClock
from gateway_core.config import GatewayConfig, config_from_dict, sha256_hex
from gateway_core.context import GatewayRequest, GatewayResponse, TokenUsage
from gateway_core.simulator.app import SimulatorApp
from gateway_core.simulator.settings import SimConfig, SimDeployment
from gateway_core.tokens.usage import record_json_usage
from gateway_core.usage.api import _with_usd
from gateway_core.usage.record import UNAUTHENTICATED, UsageRecord, record_to_dict, summarise
from gateway_core.usage.refusals import OTHER, RefusalAggregator
from tests.inprocess import running
from tests.usage_sink import ListSink

ALICE = {"api-key": "alice-key"}
NARROW = {"api-key": "narrow-key"}  # may use gpt-4o only
PROMPT = "Describe the purple giraffe orchestra rehearsing at midnight"
START = 1_795_000_000.0


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    servers = BackgroundServers()
    names = ("gpt-4o", "gpt-4o-mini", "text-embedding-3-small", "mystery")
    slow = SimDeployment(name="slow", tokens_per_s=100, completion_tokens=200)  # a stream that takes 2 s
    deployments = (*(SimDeployment(name=n) for n in names), slow)
    port = servers.serve(SimulatorApp(SimConfig(region="eastus", deployments=deployments)))
    yield f"http://127.0.0.1:{port}"
    servers.stop()


def make_config(sim_url: str, **extra: Any) -> GatewayConfig:
    backend = {
        "url": sim_url,
        "region": "eastus",
        "auth": {"type": "none"},
        "simulator": True,  # steered with x-aigw-sim-* headers
        "deployments": [
            "gpt-4o",
            {"name": "mini", "backend_name": "gpt-4o-mini", "model": "gpt-4o-mini"},
            "text-embedding-3-small",
            {"name": "mystery", "model": "mystery-model"},
            {"name": "slow", "model": "gpt-4o"},
        ],
    }
    backends = extra.pop("backends", None) or [{"name": "east", **backend}]
    return config_from_dict(
        {
            "backends": backends,
            "keys": [
                {"name": "ka", "sha256": sha256_hex("alice-key"), "user": "alice", "tenant": "contoso"},
                {"name": "kn", "sha256": sha256_hex("narrow-key"), "user": "nora", "deployments": ["gpt-4o"]},
            ],
            "stores": {"health": "memory://", "counters": "memory://", "cache": "memory://"},
            **extra,
        }
    )


def chat(
    deployment: str = "gpt-4o", headers: dict[str, str] | None = None, body: bytes | None = None, **fields: Any
) -> GatewayRequest:
    raw = body if body is not None else orjson.dumps({"messages": [{"role": "user", "content": PROMPT}], **fields})
    path = f"/openai/deployments/{deployment}/chat/completions"
    return GatewayRequest(
        "POST", path, {"api-version": "2024-10-21"}, {**ALICE, **(headers or {})}, raw, len(raw), "203.0.113.9"
    )


def micro_usd(prompt: int, completion: int, cached: int, rates: tuple[str, str, str]) -> int:
    """The cost as the price table states it (USD per 1M tokens = micro-dollars per token), rounded half up."""
    inp, cached_rate, out = (Decimal(r) for r in rates)
    exact = (prompt - cached) * inp + cached * cached_rate + completion * out
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


GPT_4O = ("2.50", "1.25", "10.00")  # gpt-4o -> gpt-4o-2024-11-20 in gateway_core/usage/prices.json


def only(sink: ListSink) -> UsageRecord:
    assert len(sink.records) == 1, sink.records
    return sink.records[0]


async def close(stream: AsyncIterator[bytes]) -> None:
    """What a host does when its client leaves: close the response's stream."""
    await cast(AsyncGenerator[bytes, None], stream).aclose()


async def drain(response: GatewayResponse) -> bytes:
    assert response.stream is not None
    return b"".join([chunk async for chunk in response.stream])


async def test_a_chat_answer_is_one_record_with_its_tokens_and_exact_cost(sim: str) -> None:
    sink = ListSink()
    async with running(make_config(sim), usage_sink=sink) as gateway:
        response = await gateway.handle(chat(headers={"x-aigw-sim-cached-tokens": "5", "x-request-id": "req-1"}))
        assert response.status == 200
        usage = orjson.loads(response.body)["usage"]
        record = only(sink)
    assert usage["prompt_tokens_details"] == {"cached_tokens": 5}
    assert (record.request_id, record.tenant, record.user, record.key_id) == ("req-1", "contoso", "alice", "ka")
    assert (record.deployment, record.model, record.backend, record.region) == ("gpt-4o", "gpt-4o", "east", "eastus")
    assert (record.method, record.path, record.status, record.stream) == (
        "POST",
        "/openai/deployments/gpt-4o/chat/completions",
        200,
        False,
    )
    assert (record.prompt_tokens, record.completion_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert record.cached_prompt_tokens == 5 and record.token_source == "backend"
    assert record.cost_micro_usd == micro_usd(usage["prompt_tokens"], usage["completion_tokens"], 5, GPT_4O)
    assert record.attempts == 1 and record.error_code is None and record.limit_rule is None
    assert record.ttfb_ms is not None and record.latency_ms >= record.ttfb_ms >= 0
    assert not record.internal and record.count == 1 and record.client_ip is None


async def test_reasoning_tokens_are_read_from_the_usage_details(sim: str) -> None:
    sink = ListSink()
    async with running(make_config(sim), usage_sink=sink) as gateway:
        response = await gateway.handle(chat(headers={"x-aigw-sim-reasoning-tokens": "4"}))
    assert orjson.loads(response.body)["usage"]["completion_tokens_details"] == {"reasoning_tokens": 4}
    assert only(sink).reasoning_tokens == 4


async def test_no_prompt_or_completion_text_in_a_record(sim: str) -> None:
    sink = ListSink()
    async with running(make_config(sim), usage_sink=sink) as gateway:
        response = await gateway.handle(chat())
        streamed = await gateway.handle(chat(stream=True))
        await drain(streamed)
    answer = orjson.loads(response.body)["choices"][0]["message"]["content"]
    words = {w for w in (PROMPT + " " + answer).lower().split() if len(w) > 3}
    assert len(sink.records) == 2
    for record in sink.records:
        text = repr(record).lower()
        assert not [w for w in words if w in text]


async def test_a_stream_is_recorded_once_when_it_ends_with_the_final_usage_chunk(sim: str) -> None:
    sink = ListSink()
    async with running(make_config(sim), usage_sink=sink) as gateway:
        response = await gateway.handle(
            chat(stream=True, stream_options={"include_usage": True}, headers={"x-aigw-sim-cached-tokens": "3"})
        )
        assert response.status == 200 and sink.records == []  # not before the end
        body = await drain(response)
    final = [orjson.loads(line[6:]) for line in body.split(b"\n") if line.startswith(b"data: {")][-1]
    usage = final["usage"]
    record = only(sink)
    assert record.stream and record.status == 200 and record.token_source == "backend"
    assert (record.prompt_tokens, record.completion_tokens, record.cached_prompt_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
        3,
    )
    assert record.cost_micro_usd == micro_usd(usage["prompt_tokens"], usage["completion_tokens"], 3, GPT_4O)
    assert record.error_code is None and record.ttfb_ms is not None


async def test_a_client_that_leaves_mid_stream_is_recorded_once_with_what_passed(sim: str) -> None:
    sink = ListSink()
    async with running(make_config(sim), usage_sink=sink) as gateway:
        response = await gateway.handle(chat("slow", stream=True, headers={"x-aigw-sim-no-usage": "1"}))
        assert response.stream is not None
        iterator = aiter(response.stream)
        await anext(iterator)
        await anext(iterator)
        await close(response.stream)  # the client is gone
        await close(response.stream)  # closed twice (host and relay): still one record
    record = only(sink)
    assert record.stream and record.error_code == "client_disconnected"
    assert record.token_source == "counted" and 0 < record.completion_tokens < 200


@pytest.mark.parametrize(
    ("request_", "status", "code", "deployment"),
    [
        (chat(body=b"{not json"), 400, None, "gpt-4o"),
        (chat("mini", headers=NARROW), 404, "DeploymentNotFound", "mini"),  # not this key's: answered as unknown
        (chat("no-such"), 404, "DeploymentNotFound", None),  # a name the gateway does not know is not kept
        (
            GatewayRequest(
                "POST", "/openai/deployments/gpt-4o/chat/completions", {}, ALICE, b"{}", 10**10, "203.0.113.9"
            ),
            413,
            "payload_too_large",
            "gpt-4o",
        ),
    ],
    ids=["400", "404-not-this-keys", "404-deployment", "413"],
)
async def test_an_authenticated_refusal_is_one_record_with_its_code(
    sim: str, request_: GatewayRequest, status: int, code: str | None, deployment: str | None
) -> None:
    sink = ListSink()
    async with running(make_config(sim), usage_sink=sink) as gateway:
        response = await gateway.handle(request_)
        assert response.status == status
        body_code = orjson.loads(response.body)["error"]["code"]
    record = only(sink)
    assert record.status == status and record.error_code == body_code
    if code is not None:
        assert body_code == code
    assert record.deployment == deployment and record.attempts == 0 and record.cost_micro_usd == 0
    assert record.tenant != UNAUTHENTICATED and record.backend is None


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@pytest.mark.parametrize(
    "name",
    ["\x1b]0;owned\x07\x1b[2J\x1b[1;1Hfake-row" + "A" * 4000, "a" * 65, "unknown-1", "gpt-4o\u200b"],
    ids=["escapes", "too-long", "unknown", "look-alike"],
)
async def test_a_client_chosen_invalid_deployment_name_never_reaches_the_records_raw(sim: str, name: str) -> None:
    """A deployment name in the path (uvicorn decodes %1B) that is invalid or unknown: the refusal is recorded
    with no deployment or model (its error code says why), so terminal escapes, 8 KB names and a new summary row
    per name never reach the records, ``aigw usage`` or the summaries."""
    sink = ListSink()
    async with running(make_config(sim), usage_sink=sink) as gateway:
        response = await gateway.handle(chat(name))
        assert response.status in (400, 404)
        code = orjson.loads(response.body)["error"]["code"]
    record = only(sink)
    assert record.deployment is None and record.model is None and record.error_code == code
    assert not _CONTROL.search(record.path) and len(record.path) <= 512  # the path keeps them %-encoded
    row = _with_usd(record_to_dict(record), record.cost_micro_usd, record.saved_micro_usd)
    assert not _CONTROL.search(render("records", {"data": [row]}, "table"))
    assert [key.deployment for key in summarise([record])] == [""]


async def test_a_limit_refusal_names_the_rule(sim: str) -> None:
    sink = ListSink()
    rules = {"rules": [{"name": "alice-tpm", "key": "user", "tokens_per_minute": 200}]}
    async with running(make_config(sim, limits=rules), usage_sink=sink) as gateway:
        ok = await gateway.handle(chat(max_tokens=50))
        refused = await gateway.handle(chat(max_tokens=500))
    assert (ok.status, refused.status) == (200, 429)
    first, second = sink.records
    assert first.limit_rule is None and first.status == 200
    assert (second.status, second.limit_rule, second.error_code) == (429, "alice-tpm", "tokens_exceed_limit")


async def test_a_failover_that_ends_in_502_records_the_tries_that_may_be_billed(sim: str) -> None:
    sink = ListSink()
    base = {"url": sim, "auth": {"type": "none"}, "simulator": True, "deployments": ["gpt-4o"]}
    backends = [{"name": "east", "region": "eastus", **base}, {"name": "west", "region": "westus", **base}]
    async with running(make_config(sim, backends=backends), usage_sink=sink) as gateway:
        response = await gateway.handle(chat(max_tokens=20, headers={"x-aigw-sim-fault": "drop"}))
        assert response.status == 502, response.body
    record = only(sink)
    assert record.status == 502 and record.error_code == orjson.loads(response.body)["error"]["code"]
    assert record.attempts == 2 and record.prompt_tokens == 0 and record.cost_micro_usd == 0
    assert record.maybe_billed_tokens > 0 and record.maybe_billed_tokens % 2 == 0  # the estimate, once per try


async def test_embeddings_are_recorded_at_their_exact_cost(sim: str) -> None:
    sink = ListSink()
    text = " ".join(["tokens"] * 800)
    raw = orjson.dumps({"input": text})
    path = "/openai/deployments/text-embedding-3-small/embeddings"
    async with running(make_config(sim), usage_sink=sink) as gateway:
        response = await gateway.handle(GatewayRequest("POST", path, {}, ALICE, raw, len(raw)))
    prompt = orjson.loads(response.body)["usage"]["prompt_tokens"]
    record = only(sink)
    assert record.prompt_tokens == prompt >= 800 and record.completion_tokens == 0
    assert record.cost_micro_usd == micro_usd(prompt, 0, 0, ("0.02", "0.02", "0")) > 0


async def test_a_model_without_a_price_is_recorded_with_no_cost_and_warned_once(
    sim: str, caplog: pytest.LogCaptureFixture
) -> None:
    sink = ListSink()
    with caplog.at_level(logging.WARNING, logger="aigw"):
        async with running(make_config(sim), usage_sink=sink) as gateway:
            for _ in range(3):
                assert (await gateway.handle(chat("mystery"))).status == 200
    assert [r.cost_micro_usd for r in sink.records] == [None, None, None]
    assert all(r.model == "mystery-model" and r.prompt_tokens > 0 for r in sink.records)
    assert len([m for m in caplog.messages if "mystery-model" in m]) == 1


async def test_a_cache_hit_costs_nothing_and_records_what_it_saved(sim: str) -> None:
    sink = ListSink()
    async with running(make_config(sim, cache={"enabled": True}), usage_sink=sink) as gateway:
        miss = await gateway.handle(chat(temperature=0))
        await gateway.tasks.drain()  # the answer is stored in the background
        hit = await gateway.handle(chat(temperature=0))
    assert (miss.header("x-aigw-cache"), hit.header("x-aigw-cache")) == ("MISS", "HIT")
    usage = orjson.loads(miss.body)["usage"]
    first, second = sink.records
    assert first.cache == "MISS" and first.cost_micro_usd == micro_usd(
        usage["prompt_tokens"], usage["completion_tokens"], 0, GPT_4O
    )
    assert second.cache == "HIT" and second.cost_micro_usd == 0 and second.attempts == 0
    assert (second.prompt_tokens, second.completion_tokens, second.token_source) == (0, 0, "cache")
    assert second.saved_tokens == usage["total_tokens"]
    assert second.saved_micro_usd == first.cost_micro_usd and second.saved_micro_usd > 0


async def test_the_semantic_caches_embeddings_call_is_recorded_as_internal_and_charged_to_the_caller(
    sim: str,
) -> None:
    sink = ListSink()
    cache = {
        "enabled": True,
        "semantic": {"deployments": ["gpt-4o"], "embedding_deployment": "text-embedding-3-small"},
    }
    async with running(make_config(sim, cache=cache), usage_sink=sink) as gateway:
        response = await gateway.handle(chat(temperature=0, headers={"x-request-id": "sem-1"}))
        assert response.status == 200
    internal = [r for r in sink.records if r.internal]
    outer = [r for r in sink.records if not r.internal]
    assert len(internal) == 1 and len(outer) == 1
    embedding = internal[0]
    assert (embedding.request_id, embedding.user, embedding.tenant) == ("sem-1", "alice", "contoso")
    assert embedding.deployment == "text-embedding-3-small" and embedding.prompt_tokens > 0
    assert embedding.path == "/openai/deployments/text-embedding-3-small/embeddings"
    assert outer[0].cache == "MISS" and outer[0].deployment == "gpt-4o"


async def test_unauthenticated_refusals_are_aggregated_per_address_code_and_minute(sim: str) -> None:
    sink = ListSink()
    clock = ManualClock(START)
    bad = {"api-key": "wrong"}
    async with running(make_config(sim), clock=clock, usage_sink=sink) as gateway:
        for _ in range(3):
            assert (await gateway.handle(chat(headers=bad))).status == 401
        unknown = GatewayRequest("GET", "/nope", {}, {}, b"", 0, "203.0.113.9")
        assert (await gateway.handle(unknown)).status == 404
        assert (await gateway.handle(GatewayRequest("GET", "/healthz", {}, {}))).status == 200
        assert sink.records == []  # the minute is still open
        clock.advance(60)
        assert (await gateway.handle(chat())).status == 200  # any later request hands closed minutes over
        rows = {(r.error_code, r.count) for r in sink.records if r.tenant == UNAUTHENTICATED}
        assert rows == {("invalid_api_key", 3), ("path_not_found", 1)}
        assert all(r.client_ip == "203.0.113.9" and r.path == "" for r in sink.records if r.count > 1)
        assert (await gateway.handle(chat(headers=bad))).status == 401
    # Closing hands over the open minute too.
    assert [r.count for r in sink.records if r.tenant == UNAUTHENTICATED][-1] == 1
    assert len(sink.records) == 4 and sink.closed


def test_the_aggregation_map_is_bounded_and_folds_the_overflow_into_one_row() -> None:
    sink = ListSink()
    aggregator = RefusalAggregator(sink, max_keys=10)
    for n in range(5000):  # an attacker rotating source addresses
        aggregator.add(START, f"198.51.{n // 256}.{n % 256}", 401, "invalid_api_key")
    assert len(aggregator) == 11
    aggregator.emit_all()
    assert len(sink.records) == 11 and sum(r.count for r in sink.records) == 5000
    assert [r.count for r in sink.records if r.client_ip == OTHER] == [4990]


async def test_healthz_is_not_recorded_and_nothing_is_when_usage_is_off(sim: str) -> None:
    sink = ListSink()
    async with running(make_config(sim), usage_sink=sink) as gateway:
        await gateway.handle(GatewayRequest("GET", "/healthz", {}, {}))
    assert sink.records == []
    off = ListSink()
    async with running(make_config(sim, usage={"enabled": False}), usage_sink=off) as gateway:
        assert gateway.usage is None
        assert (await gateway.handle(chat())).status == 200
    assert off.records == []


async def test_a_host_adapters_own_refusal_is_recorded_for_the_caller(sim: str) -> None:
    sink = ListSink()
    from gateway_core.errors import PayloadTooLarge

    async with running(make_config(sim), usage_sink=sink) as gateway:
        head = GatewayRequest("POST", "/openai/deployments/gpt-4o/chat/completions", {}, ALICE, client_ip="203.0.113.9")
        checked = await gateway.check_head(head)
        assert isinstance(checked, CheckedHead)
        response = gateway.refuse_checked(checked, PayloadTooLarge("too big"))
    assert response.status == 413
    record = only(sink)
    assert (record.user, record.status, record.error_code) == ("alice", 413, "payload_too_large")


def test_a_gateway_given_no_sink_records_to_its_own_writer_unless_usage_is_off(sim: str) -> None:
    gateway = Gateway(make_config(sim, stores={"usage": "memory://"}))
    assert gateway.usage is not None and gateway.usage_runtime is not None
    assert gateway.usage.sink is gateway.usage_runtime.writer
    off = Gateway(make_config(sim, usage={"enabled": False}))
    assert off.usage is None and off.usage_runtime is None


async def test_a_stream_closed_before_its_first_chunk_is_still_recorded(sim: str) -> None:
    sink = ListSink()
    async with running(make_config(sim), usage_sink=sink) as gateway:
        response = await gateway.handle(chat(stream=True))
        assert response.stream is not None
        await close(response.stream)  # e.g. the client left between the head and the body
    assert only(sink).error_code == "client_disconnected"


@pytest.mark.parametrize(
    ("details", "cached", "reasoning"),
    [
        ({"prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {"reasoning_tokens": 2}}, 4, 2),
        (
            {"prompt_tokens_details": {"cached_tokens": 99}, "completion_tokens_details": {"reasoning_tokens": 99}},
            10,
            5,
        ),
        (
            {"prompt_tokens_details": {"cached_tokens": -3}, "completion_tokens_details": {"reasoning_tokens": True}},
            0,
            0,
        ),
        ({"prompt_tokens_details": [4], "completion_tokens_details": None}, 0, 0),
        ({}, 0, 0),
    ],
    ids=["reported", "more-than-the-whole", "negative-and-bool", "not-objects", "absent"],
)
def test_cached_and_reasoning_tokens_are_read_and_bounded(details: dict[str, Any], cached: int, reasoning: int) -> None:
    tokens = TokenUsage()
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, **details}
    record_json_usage(orjson.dumps({"usage": usage}), tokens)
    assert (tokens.prompt, tokens.completion, tokens.cached_prompt, tokens.reasoning) == (10, 5, cached, reasoning)
