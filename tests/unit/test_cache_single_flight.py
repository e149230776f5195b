"""The cache's single flight releases its waiters whatever fails in the leader's miss path, and stays bounded.

The CachePolicy runs in-process with a memory store (or one whose port fails) and handlers standing in for the
rest of the pipeline; the overlap of leader and waiter is made with events, never with latency.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest

from gateway_core.background import BackgroundTasks
from gateway_core.catalogue import PoolTable
from gateway_core.clock import ManualClock
from gateway_core.config import config_from_dict
from gateway_core.context import (
    Endpoint,
    EndpointKind,
    GatewayRequest,
    GatewayResponse,
    Principal,
    RequestContext,
    Surface,
    UsageSource,
)
from gateway_core.errors import BackendUnreachable
from gateway_core.policies.cache import CachePolicy
from gateway_core.storage.memory import MemoryCache
from gateway_core.storage.ports import CacheEntry, StorageError

ANSWER = orjson.dumps(
    {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
)
PATIENCE_S = 10.0  # a released waiter answers at once; a wedged one would wait single_flight_wait_s (120 s)


class SignallingCache(MemoryCache):
    """A memory store that says when it was asked, and can fail like an unreachable store."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail
        self.asked = asyncio.Event()

    async def get(self, bucket: str, key: str, now_s: float) -> CacheEntry | None:
        self.asked.set()
        if self.fail:
            raise StorageError("cache store down")
        return await super().get(bucket, key, now_s)

    async def put(self, entry: CacheEntry) -> None:
        if self.fail:
            raise StorageError("cache store down")
        await super().put(entry)


def make_policy(store: MemoryCache, clock: ManualClock | None = None, max_in_flight: int = 10_000) -> CachePolicy:
    config = config_from_dict(
        {
            "backends": [
                {"name": "b", "url": "http://127.0.0.1:9", "auth": {"type": "none"}, "deployments": ["gpt-4o"]}
            ],
            "cache": {"enabled": True},
        }
    )
    clock = clock or ManualClock()
    return CachePolicy(config.cache, store, PoolTable(config), clock, BackgroundTasks(), max_in_flight=max_in_flight)


def request(text: str = "same question", stream: bool = False) -> RequestContext:
    body: dict[str, object] = {"messages": [{"role": "user", "content": text}], "temperature": 0, "stream": stream}
    raw = orjson.dumps(body)
    ctx = RequestContext(GatewayRequest("POST", "/openai/deployments/gpt-4o/chat/completions", {}, {}, raw), "r", 0.0)
    ctx.endpoint = Endpoint(EndpointKind.INFERENCE, Surface.AZURE, "chat/completions", "gpt-4o")
    ctx.principal = Principal("alice", "contoso")
    ctx.deployment, ctx.api_version, ctx.body_json, ctx.stream = "gpt-4o", "2024-10-21", body, stream
    return ctx


def answering(body: bytes = ANSWER) -> Callable[[RequestContext], Awaitable[GatewayResponse]]:
    async def handler(ctx: RequestContext) -> GatewayResponse:
        ctx.tokens.prompt, ctx.tokens.completion, ctx.tokens.source = 1, 1, UsageSource.BACKEND
        return GatewayResponse(200, [("content-type", "application/json")], body)

    return handler


class Leader:
    """A miss whose backend call is held until ``release`` is set, then does ``then``."""

    def __init__(self, then: Callable[[RequestContext], Awaitable[GatewayResponse]]) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self._then = then

    async def __call__(self, ctx: RequestContext) -> GatewayResponse:
        self.entered.set()
        await self.release.wait()
        return await self._then(ctx)


async def waiter_behind(policy: CachePolicy, store: SignallingCache, leader: Leader) -> asyncio.Task[GatewayResponse]:
    """Start a second identical request once the leader is in flight; return when it waits for the leader."""
    await leader.entered.wait()
    store.asked.clear()
    task = asyncio.create_task(policy(request(), answering()))
    await store.asked.wait()  # it looked the key up; from there it goes straight to waiting for the leader
    return task


async def failing(ctx: RequestContext) -> GatewayResponse:
    raise BackendUnreachable("backend down")


async def test_waiters_are_released_when_the_leader_fails() -> None:
    store = SignallingCache()
    policy = make_policy(store)
    leader = Leader(failing)
    first = asyncio.create_task(policy(request(), leader))
    second = await waiter_behind(policy, store, leader)
    leader.release.set()
    with pytest.raises(BackendUnreachable):
        await first
    response = await asyncio.wait_for(second, PATIENCE_S)
    assert response.status == 200 and response.header("x-aigw-cache") == "MISS"  # went alone, then led
    assert policy.in_flight == 0


async def test_waiters_are_released_when_the_leader_is_cancelled() -> None:
    store = SignallingCache()
    policy = make_policy(store)
    leader = Leader(answering())
    first = asyncio.create_task(policy(request(), leader))
    second = await waiter_behind(policy, store, leader)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert (await asyncio.wait_for(second, PATIENCE_S)).status == 200
    assert policy.in_flight == 0


async def test_an_answer_the_cache_cannot_read_is_returned_and_releases_its_waiters() -> None:
    store = SignallingCache()
    policy = make_policy(store)
    leader = Leader(answering(b'{"object": "chat.completion", "choices": 5}'))
    first = asyncio.create_task(policy(request(), leader))
    second = await waiter_behind(policy, store, leader)
    leader.release.set()
    assert (await first).status == 200
    assert (await asyncio.wait_for(second, PATIENCE_S)).status == 200
    assert policy.in_flight == 0


async def test_a_failing_store_never_wedges_the_flight() -> None:
    store = SignallingCache(fail=True)
    policy = make_policy(store)
    leader = Leader(answering())
    first = asyncio.create_task(policy(request(), leader))
    second = await waiter_behind(policy, store, leader)
    leader.release.set()
    assert (await first).header("x-aigw-cache") == "MISS"
    shared = await asyncio.wait_for(second, PATIENCE_S)
    assert shared.header("x-aigw-cache") == "HIT" and shared.body == ANSWER  # answered before the failed write
    assert policy.in_flight == 0


class Upstream:
    """A streamed answer, with a close that can fail."""

    def __init__(self, fail_on_close: bool = False) -> None:
        self._chunks = [b'data: {"object": "chat.completion.chunk", "choices": []}\n\n', b"data: [DONE]\n\n"]
        self._fail_on_close = fail_on_close

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if not self._chunks:
            raise StopAsyncIteration
        return self._chunks.pop(0)

    async def aclose(self) -> None:
        if self._fail_on_close:
            raise OSError("connection reset while closing")


def streaming(upstream: Upstream) -> Callable[[RequestContext], Awaitable[GatewayResponse]]:
    async def handler(ctx: RequestContext) -> GatewayResponse:
        return GatewayResponse(200, [("content-type", "text/event-stream")], stream=upstream)

    return handler


async def test_a_stream_closed_by_its_client_before_the_first_chunk_releases_waiters() -> None:
    store = SignallingCache()
    policy = make_policy(store)
    leader = Leader(streaming(Upstream()))
    first = asyncio.create_task(policy(request(), leader))
    second = await waiter_behind(policy, store, leader)
    leader.release.set()
    stream = (await first).stream
    assert stream is not None
    await stream.aclose()  # type: ignore[attr-defined]  # the client went away before anything was sent
    assert (await asyncio.wait_for(second, PATIENCE_S)).status == 200
    assert policy.in_flight == 0


async def test_a_stream_whose_upstream_fails_to_close_releases_waiters() -> None:
    store = SignallingCache()
    policy = make_policy(store)
    leader = Leader(streaming(Upstream(fail_on_close=True)))
    first = asyncio.create_task(policy(request(), leader))
    second = await waiter_behind(policy, store, leader)
    leader.release.set()
    stream = (await first).stream
    assert stream is not None
    with pytest.raises(OSError, match="reset"):
        async for _ in stream:
            pass
    assert (await asyncio.wait_for(second, PATIENCE_S)).status == 200
    assert policy.in_flight == 0


async def test_a_leader_older_than_the_waiters_patience_is_not_waited_for() -> None:
    store = SignallingCache()
    clock = ManualClock()
    policy = make_policy(store, clock)
    response = await policy(request(), streaming(Upstream()))  # a stream nobody reads nor closes
    assert policy.in_flight == 1
    clock.advance(121)  # past single_flight_wait_s
    later = await asyncio.wait_for(policy(request(), answering()), PATIENCE_S)
    assert later.header("x-aigw-cache") == "MISS"
    assert response.stream is not None


async def test_in_flight_misses_are_capped_and_the_rest_go_alone() -> None:
    policy = make_policy(SignallingCache(), max_in_flight=2)
    leaders = [Leader(answering()) for _ in range(3)]
    tasks = []
    for i, leader in enumerate(leaders):
        tasks.append(asyncio.create_task(policy(request(f"question {i}"), leader)))
        await leader.entered.wait()
    assert policy.in_flight == 2  # the third miss went alone
    for leader in leaders:
        leader.release.set()
    assert [(await t).header("x-aigw-cache") for t in tasks] == ["MISS"] * 3
    assert policy.in_flight == 0
