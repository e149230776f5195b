"""A streamed answer is cached only if a replay gives back every field the client saw; SSE framing as sent."""

from __future__ import annotations

from typing import Any

import orjson

from gateway_core.background import BackgroundTasks
from gateway_core.cache.assemble import StreamAssembler
from gateway_core.cache.replay import replay_as_sse, replayable
from gateway_core.catalogue import PoolTable
from gateway_core.clock import ManualClock
from gateway_core.config import config_from_dict
from gateway_core.context import GatewayResponse, RequestContext
from gateway_core.policies.cache import CachePolicy
from gateway_core.storage.memory import MemoryCache
from tests.unit.test_cache_single_flight import request

USAGE = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
SAFE = {"hate": {"filtered": False, "severity": "safe"}, "violence": {"filtered": False, "severity": "safe"}}
HEAD = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o", "system_fingerprint": "fp"}


def event(choices: list[dict[str, Any]], **top: Any) -> bytes:
    return b"data: " + orjson.dumps({**HEAD, "choices": choices, **top}) + b"\n\n"


def part(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None, **extra}


def assemble(chunks: list[bytes]) -> dict[str, Any] | None:
    assembler = StreamAssembler()
    for chunk in chunks:
        assembler.feed(chunk)
    return assembler.answer(USAGE)


async def replayed(answer: dict[str, Any]) -> list[bytes]:
    return [chunk async for chunk in replay_as_sse(answer, include_usage=False)]


def simple_stream(separator: bytes = b"\n\n", end: bytes = b"data: [DONE]\n\n") -> list[bytes]:
    events = [
        event([part({"role": "assistant", "content": ""})]),
        event([part({"content": "Hello"})]),
        event([part({"content": " world"})]),
        event([part({}, "stop")]),
    ]
    return [e.replace(b"\n\n", separator) for e in events] + [end]


def test_a_stream_ending_with_a_bare_done_line_is_complete() -> None:
    for end in (b"data: [DONE]", b"data: [DONE]\n", b"data:[DONE]\r\n"):
        answer = assemble(simple_stream(end=end))
        assert answer is not None, end
        assert answer["choices"][0]["message"]["content"] == "Hello world"


def test_crlf_and_cr_event_separators_are_read() -> None:
    for separator in (b"\r\n\r\n", b"\r\r"):
        answer = assemble(simple_stream(separator, b"data: [DONE]" + separator))
        assert answer is not None, separator
        assert answer["choices"][0]["message"]["content"] == "Hello world"


def test_an_event_split_across_chunks_and_several_data_lines_are_joined() -> None:
    whole = b"".join(simple_stream(b"\r\n\r\n"))
    answer = assemble([whole[i : i + 7] for i in range(0, len(whole), 7)])
    assert answer is not None and answer["choices"][0]["message"]["content"] == "Hello world"
    multi = b'data: {"id": "c1", "object": "chat.completion.chunk",\ndata: "choices": [{"index": 0, "delta": '
    multi += b'{"content": "joined"}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'
    answer = assemble([multi])
    assert answer is not None and answer["choices"][0]["message"]["content"] == "joined"


async def test_refusal_function_call_tool_calls_logprobs_and_filters_survive_a_replay() -> None:
    token = {"token": "No", "logprob": -0.1, "bytes": [78, 111], "top_logprobs": []}
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    chunks = [
        event([], prompt_filter_results=[{"prompt_index": 0, "content_filter_results": SAFE}]),
        event([part({"role": "assistant", "content": None})]),
        event([part({"refusal": "No"}, logprobs={"content": None, "refusal": [token]}, content_filter_results=SAFE)]),
        event([part({"refusal": ", sorry."}, content_filter_results=SAFE)]),
        event([part({"function_call": {"name": "legacy", "arguments": '{"a"'}})]),
        event([part({"function_call": {"arguments": ": 1}"}})]),
        event([part({"tool_calls": [call]})]),
        event([part({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Paris"}'}}]})]),
        event([part({}, "tool_calls")]),
        b"data: [DONE]\n\n",
    ]
    answer = assemble(chunks)
    assert answer is not None
    choice = answer["choices"][0]
    message = choice["message"]
    assert message["refusal"] == "No, sorry."
    assert message["function_call"] == {"name": "legacy", "arguments": '{"a": 1}'}
    assert message["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert choice["logprobs"] == {"refusal": [token]}
    assert choice["content_filter_results"] == SAFE
    assert answer["prompt_filter_results"] == [{"prompt_index": 0, "content_filter_results": SAFE}]
    assert replayable(answer)
    assert assemble(await replayed(answer)) == answer  # the replay carries everything back


def test_a_stream_with_fields_a_replay_would_lose_is_not_stored() -> None:
    other = {**SAFE, "hate": {"filtered": False, "severity": "low"}}
    cases = {
        "audio": [event([part({"role": "assistant", "audio": {"id": "a1", "data": "UklGR"}})])],
        "annotations": [event([part({"content": "x", "annotations": [{"type": "url_citation"}]})])],
        "changing filter verdicts": [
            event([part({"content": "a"}, content_filter_results=SAFE)]),
            event([part({"content": "b"}, content_filter_results=other)]),
        ],
        "an unknown top-level field": [event([part({"content": "x"})], citations=["https://example.invalid"])],
        "completions logprobs": [
            b'data: {"id": "c", "object": "text_completion", "choices": [{"index": 0, "text": "x", '
            b'"logprobs": {"tokens": ["x"], "token_logprobs": [-1.0]}, "finish_reason": null}]}\n\n'
        ],
    }
    for name, chunks in cases.items():
        end = [event([part({}, "stop")]) if b"text_completion" not in chunks[0] else b""]
        assert assemble([*chunks, *end, b"data: [DONE]\n\n"]) is None, name


def test_a_stored_answer_with_fields_a_replay_would_lose_does_not_answer_a_stream() -> None:
    message: dict[str, Any] = {"role": "assistant", "content": "hi", "refusal": None, "annotations": []}
    answer = {"object": "chat.completion", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    assert replayable(answer)  # empty extras carry nothing
    message["audio"] = {"id": "a1", "data": "UklGR", "transcript": "hi"}
    assert not replayable(answer)


async def test_a_streamed_request_does_not_get_a_stored_answer_it_would_lose_fields_of() -> None:

    config = config_from_dict(
        {
            "backends": [
                {"name": "b", "url": "http://127.0.0.1:9", "auth": {"type": "none"}, "deployments": ["gpt-4o"]}
            ],
            "cache": {"enabled": True},
        }
    )
    tasks = BackgroundTasks()
    policy = CachePolicy(config.cache, MemoryCache(), PoolTable(config), ManualClock(), tasks)
    audio = {"id": "a1", "data": "UklGR", "transcript": "hi"}
    message = {"role": "assistant", "content": "hi", "audio": audio}
    body = orjson.dumps(
        {"object": "chat.completion", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    )
    calls = []

    async def backend(ctx: RequestContext) -> GatewayResponse:
        calls.append(ctx.stream)
        return GatewayResponse(200, [("content-type", "application/json")], body)

    assert (await policy(request(), backend)).header("x-aigw-cache") == "MISS"
    await tasks.drain()
    assert (await policy(request(stream=True), backend)).header("x-aigw-cache") == "MISS"  # not a lossy replay
    assert (await policy(request(), backend)).header("x-aigw-cache") == "HIT"  # JSON gets it whole
    assert calls == [False, True]
