"""The simulator's seams, each on its own: fault selection, Azure's fault replies, its TPM limit, SSE framing and
pacing, the request record, and runtime settings."""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import MutableMapping
from typing import Any

import orjson
import pytest

from gateway_core.simulator.answers import build_answer
from gateway_core.simulator.asgi import Dropped, Watch
from gateway_core.simulator.faults import TokensPerMinute, fault_reply, pick_fault
from gateway_core.simulator.records import RequestRecord, record_of
from gateway_core.simulator.reply import SimReply, send_reply
from gateway_core.simulator.settings import Fault, SimConfig, patched
from gateway_core.simulator.sse import DONE, play, sse_stream

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def test_configured_faults_strike_by_rate_and_repeat_with_the_seed() -> None:
    faults = (Fault(kind="503", rate=0.3), Fault(kind="429", rate=0.5))

    def run(seed: int) -> list[str | None]:
        rng = random.Random(seed)
        return [f.kind if (f := pick_fault(rng, faults, {})) else None for _ in range(200)]

    kinds = run(7)
    assert kinds == run(7)  # a run is repeatable
    assert kinds != run(8)
    share_503 = kinds.count("503") / len(kinds)
    share_429 = kinds.count("429") / len(kinds)  # only when 503 did not strike: 0.7 * 0.5
    assert 0.15 < share_503 < 0.45 and 0.2 < share_429 < 0.5 and None in kinds
    assert pick_fault(random.Random(0), (Fault(kind="500", rate=0.0),), {}) is None
    assert pick_fault(random.Random(0), (Fault(kind="500", rate=1.0),), {}) == Fault(kind="500")


def test_a_header_forces_a_fault_and_an_unknown_kind_forces_none() -> None:
    rng = random.Random(1)
    state = rng.getstate()
    always = (Fault(kind="500"),)
    forced = pick_fault(rng, always, {"x-aigw-sim-fault": "503", "x-aigw-sim-retry-after": "2.5"})
    assert forced == Fault(kind="503", retry_after_s=2.5)
    assert pick_fault(rng, always, {"x-aigw-sim-fault": "meteor"}) is None
    assert rng.getstate() == state  # forcing draws nothing, so the configured faults' sequence is undisturbed


def test_fault_replies_are_azures() -> None:
    throttled = fault_reply(Fault(kind="429", retry_after_s=2.6))
    assert throttled.status == 429
    assert dict(throttled.headers) == {
        "retry-after": "3",
        "retry-after-ms": "2600",
        "x-ratelimit-remaining-tokens": "0",
    }
    assert "retry after 3 seconds" in orjson.loads(throttled.body)["error"]["message"]
    unavailable = fault_reply(Fault(kind="503", retry_after_s=0.2))
    assert (unavailable.status, dict(unavailable.headers)["retry-after"]) == (503, "1")  # never below 1 s
    assert orjson.loads(unavailable.body)["error"]["code"] == "ServiceUnavailable"
    failed = fault_reply(Fault(kind="500"))
    assert (failed.status, failed.headers) == (500, ())


def test_tokens_per_minute_refuse_until_the_minute_renews() -> None:
    now = [600.0 + 45]  # 45 s into a minute
    limit = TokensPerMinute(clock=lambda: now[0])
    assert limit.wait_s("a", None, 10**9) is None  # no limit configured
    assert limit.wait_s("a", 60, 40) is None
    assert limit.wait_s("a", 60, 20) is None  # exactly the limit
    assert limit.wait_s("a", 60, 1) == pytest.approx(15.0)
    assert limit.wait_s("b", 60, 60) is None  # each deployment has its own
    now[0] = 660.0
    assert limit.wait_s("a", 60, 60) is None  # a new minute


def stream_frames(**kwargs: Any) -> tuple[list[bytes], list[dict[str, Any] | str]]:
    stream = sse_stream(build_answer("chat/completions", {**CHAT, **kwargs.pop("request", {})}, "gpt-4o", 3), **kwargs)
    frames = [*stream.opening, *stream.pieces, *stream.closing]
    assert all(f.startswith(b"data: ") and f.endswith(b"\n\n") and b"\n" not in f[:-2] for f in frames)
    events = [f[6:-2].decode() for f in frames]
    return frames, [e if e == "[DONE]" else orjson.loads(e) for e in events]


def test_sse_frames_a_chat_stream_with_its_usage_chunk() -> None:
    frames, events = stream_frames(chat=True, include_usage=True)
    assert frames[-1] == DONE and len(events) == 1 + 3 + 1 + 1 + 1
    chunks = [e for e in events if isinstance(e, dict)]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["usage"] is None for c in chunks[:-1])  # null until the last, as Azure sends it
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[1:-2]).count(" ") == 2
    _, without = stream_frames(chat=True, include_usage=False)
    assert all("usage" not in e for e in without if isinstance(e, dict)) and len(without) == len(events) - 1


def test_sse_frames_tool_call_deltas_and_text_completions() -> None:
    tools = [{"type": "function", "function": {"name": "search"}}]
    _, events = stream_frames(chat=True, include_usage=False, request={"tools": tools, "tool_choice": "required"})
    chunks = [e for e in events if isinstance(e, dict)]
    assert chunks[0]["choices"][0]["delta"]["tool_calls"][0]["function"] == {"name": "search", "arguments": ""}
    arguments = "".join(c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] for c in chunks[1:-1])
    assert orjson.loads(arguments) == {"text": orjson.loads(arguments)["text"]}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    answer = build_answer("completions", {"prompt": "say", "n": 2}, "gpt-4o", 2)
    stream = sse_stream(answer, chat=False, include_usage=False)
    assert stream.opening == ()  # no role chunk for completions
    first = orjson.loads(stream.pieces[0][6:])
    assert first["object"] == "text_completion" and [c["index"] for c in first["choices"]] == [0, 1]


class Sent:
    def __init__(self) -> None:
        self.messages: list[MutableMapping[str, Any]] = []

    async def __call__(self, message: MutableMapping[str, Any]) -> None:
        self.messages.append(message)


async def never_disconnects() -> MutableMapping[str, Any]:
    await asyncio.Event().wait()
    return {"type": "http.disconnect"}


async def disconnects() -> MutableMapping[str, Any]:
    return {"type": "http.disconnect"}


def test_play_paces_pieces_ends_the_body_and_notes_the_outcome() -> None:
    stream = sse_stream(build_answer("chat/completions", CHAT, "gpt-4o", 4), chat=True, include_usage=True)
    sent, record = Sent(), RequestRecord()

    async def go() -> None:
        async with Watch(never_disconnects, record) as watch:
            await play(sent, stream, watch)

    asyncio.run(go())
    assert [m["body"] for m in sent.messages] == [*stream.opening, *stream.pieces, *stream.closing]
    assert [m["more_body"] for m in sent.messages][-2:] == [True, False]  # only the [DONE] frame ends the body
    assert record["outcome"] == "completed"


def test_play_breaks_off_halfway_when_dropped_and_stops_when_the_client_leaves() -> None:
    stream = sse_stream(build_answer("chat/completions", CHAT, "gpt-4o", 4), chat=True, include_usage=False)
    sent, record = Sent(), RequestRecord()

    async def dropped() -> None:
        async with Watch(never_disconnects, record) as watch:
            await play(sent, stream, watch, drop=True)

    with pytest.raises(Dropped):
        asyncio.run(dropped())
    assert [m["body"] for m in sent.messages] == [*stream.opening, *stream.pieces[:2]] and "outcome" not in record

    sent, record = Sent(), RequestRecord()

    async def left() -> None:
        async with Watch(disconnects, record) as watch:
            await asyncio.sleep(0)  # the watch hears the disconnect
            await play(sent, stream, watch)

    asyncio.run(left())
    assert [m["body"] for m in sent.messages] == list(stream.opening)
    assert record["outcome"] == "client_disconnected"


def test_the_record_keeps_the_body_bytes_bounded() -> None:
    scope = {"method": "POST", "path": "/v1/embeddings", "raw_path": b"/v1/embeddings", "query_string": b""}
    body = b'{"input":  "caf\\u00e9"}\n'
    record = record_of(scope, {}, {}, body, max_body_bytes=1024)
    assert base64.b64decode(record["body_base64"]) == body
    assert (record["body_bytes"], record["body_truncated"]) == (len(body), False)
    cut = record_of(scope, {}, {}, body, max_body_bytes=5)
    assert base64.b64decode(cut["body_base64"]) == body[:5]
    assert (cut["body_bytes"], cut["body_truncated"]) == (len(body), True)


def test_runtime_settings_merge_a_json_object_only() -> None:
    config = SimConfig(region="eastus")
    changed = patched(config, b'{"faults": [{"kind": "503"}]}')
    assert changed.faults == (Fault(kind="503"),) and changed.region == "eastus"
    for bad in (b"[1]", b"nope", b'{"faults": [{"kind": "meteor"}]}', b'{"unknown": 1}'):
        with pytest.raises(ValueError):
            patched(config, bad)


def test_a_reply_that_waits_or_streams_needs_a_watch() -> None:
    stream = sse_stream(build_answer("chat/completions", CHAT, "gpt-4o", 1), chat=True, include_usage=False)
    for reply in (SimReply(200, delay_s=0.5), SimReply(200, stream=stream), SimReply(200, b"{}", drop=True)):
        with pytest.raises(ValueError, match="Watch"):
            asyncio.run(send_reply(Sent(), reply))
    sent = Sent()
    asyncio.run(send_reply(sent, SimReply(404, b"{}", (("x-a", "1"),))))
    assert sent.messages == [
        {
            "type": "http.response.start",
            "status": 404,
            "headers": [(b"content-type", b"application/json"), (b"x-a", b"1")],
        },
        {"type": "http.response.body", "body": b"{}"},
    ]


def test_a_client_gone_during_the_delay_gets_nothing_and_a_dropped_answer_breaks_halfway() -> None:
    sent, record = Sent(), RequestRecord()
    # The watch hears the client leave long before the delay ends (the generous bound only stops a hang).
    asyncio.run(asyncio.wait_for(send_reply(sent, SimReply(200, b"{}", delay_s=60), Watch(disconnects, record)), 30))
    assert sent.messages == [] and record["outcome"] == "client_disconnected"

    sent, record = Sent(), RequestRecord()
    with pytest.raises(Dropped):
        asyncio.run(send_reply(sent, SimReply(200, b"0123456789", drop=True), Watch(never_disconnects, record)))
    assert [m.get("body") for m in sent.messages] == [None, b"01234"] and sent.messages[1]["more_body"] is True
    assert "outcome" not in record
