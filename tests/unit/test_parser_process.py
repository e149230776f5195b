"""Large bodies are parsed in a child process (``policies/parser_process.py``), with exactly the outcome of
parsing them on the event loop: the same object (so the same token counts), the same 400s."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from gateway_core.clock import ManualClock
from gateway_core.errors import BadRequest, ServiceUnavailable
from gateway_core.policies.json_body import (
    MAX_COMMA_BYTES,
    MAX_CONTAINER_BYTES,
    MAX_CONTAINERS,
    MAX_ELEMENTS,
    MAX_MEMBERS,
    MAX_NESTING_DEPTH,
    MAX_STRINGS,
    parse_object,
)
from gateway_core.policies.parser_process import BUSY_INLINE_BYTES, LARGE_BODY_BYTES, ParserProcess
from gateway_core.tokens.counting import chat_prompt_tokens
from gateway_core.tokens.encodings import encoding

PAD = "lorem ipsum dolor sit amet, é ü 中文 🎉 " * (LARGE_BODY_BYTES // 40)  # past the threshold on its own


@pytest.fixture
async def parser() -> AsyncIterator[ParserProcess]:
    process = ParserProcess()
    yield process
    await process.close()


def _bad_bodies() -> dict[str, bytes]:
    padded = orjson.dumps({"model": "gpt-4o", "pad": PAD})
    deep = MAX_NESTING_DEPTH + 1
    return {
        "truncated": padded[:-1],
        "an array": orjson.dumps([PAD]),
        "a string": orjson.dumps(PAD),
        "invalid UTF-8": padded[:-2] + b'\xff"}',
        "a lone surrogate escape": padded[:-2] + b'\\ud800"}',
        "too many arrays": padded[:-1] + b',"x":[' + b"[]," * (MAX_CONTAINERS + 1) + b"[]]}",
        "too many elements": padded[:-1] + b',"x":[' + b"1," * (MAX_ELEMENTS + 1) + b"1]}",
        "too many members": padded[:-1]
        + b',"x":{'
        + b"".join(b'"k%d":0,' % i for i in range(MAX_MEMBERS))
        + b'"z":0}}',
        "too many strings": padded[:-1] + b',"x":[' + b'"s",' * MAX_STRINGS + b'"s"]}',
        "too many brackets to parse": padded[:-1] + b',"x":[' + b"[]," * MAX_CONTAINER_BYTES + b"[]]}",
        "too many commas to parse": padded[:-1] + b',"x":[' + b"1," * MAX_COMMA_BYTES + b"1]}",
        "nested too deep": padded[:-1] + b',"x":' + b"[" * deep + b"]" * deep + b"}",
        "an empty key after a comma": padded[:-1] + b",}",
    }


@pytest.mark.parametrize("name", list(_bad_bodies()))
async def test_a_large_bad_body_gets_the_same_400_from_the_child(parser: ParserProcess, name: str) -> None:
    raw = _bad_bodies()[name]
    assert len(raw) >= LARGE_BODY_BYTES
    with pytest.raises(BadRequest) as inline:
        parse_object(raw)
    with pytest.raises(BadRequest) as child:
        await parser.parse(raw)
    assert parser.pid is not None and parser.pid != os.getpid()  # it was the child that answered
    got, expected = child.value, inline.value
    assert (type(got), got.message, got.code, got.param) == (type(expected), expected.message, expected.code, None)


async def test_a_cheap_body_is_parsed_on_the_loop_while_the_child_is_busy(parser: ParserProcess) -> None:
    """The reviewer's head-of-line case: a benign 1.2 MB body waited seconds behind others' million-key bodies.
    A body under BUSY_INLINE_BYTES whose byte counts are under the caps no longer waits for the child."""
    hostile = orjson.dumps({"x": {f"k{i}": 0 for i in range(999_000)}})  # ~0.5 s of the child's time, then a 400
    benign = orjson.dumps({"n": 1, "pad": PAD})
    assert LARGE_BODY_BYTES <= len(benign) < BUSY_INLINE_BYTES
    await parser.parse(benign)  # the child is started
    queued = asyncio.ensure_future(parser.parse(hostile))
    while not parser.busy:  # noqa: ASYNC110 - yields (no timed wait) until the hostile body holds the child
        await asyncio.sleep(0)
    assert (await parser.parse(benign))["n"] == 1
    assert not queued.done()  # answered while the child still works on the hostile body
    with pytest.raises(BadRequest) as refused:
        await queued
    assert refused.value.code == "too_many_members"


async def test_a_large_body_comes_back_as_the_same_object_and_counts_the_same_tokens(parser: ParserProcess) -> None:
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are terse. ünïcødé \u2028 🎉"},
            {"role": "user", "content": [{"type": "text", "text": PAD}], "name": "x"},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "numbers": [0, -0.0, 1.5e-300, 1.7976931348623157e308, 2**63 - 1, -(2**63), 0.1],
        "nested": {"a": {"b": [None, True, False, {}, []]}},
    }
    raw = orjson.dumps(body).replace(b'"model":"gpt-4o"', b'"model":"ignored","model":"gpt-4o"')  # last one wins
    parsed = await parser.parse(raw)
    assert parser.pid is not None
    assert orjson.dumps(parsed) == orjson.dumps(parse_object(raw)) == orjson.dumps(body)
    enc = encoding("o200k_base")
    assert chat_prompt_tokens(parsed, enc) == chat_prompt_tokens(body, enc)


async def test_a_parse_cancelled_midway_leaves_the_child_in_step(parser: ParserProcess) -> None:
    first = orjson.dumps({"n": 1, "pad": PAD * 2})  # too large to be parsed on the loop while the child is busy
    second = orjson.dumps({"n": 2, "pad": PAD * 2})
    for yields in range(4):  # cancelled at different points of the exchange
        task = asyncio.ensure_future(parser.parse(first))
        for _ in range(yields):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await parser.parse(second))["n"] == 2


async def test_a_killed_child_is_replaced_and_no_body_is_lost(parser: ParserProcess) -> None:
    raw = orjson.dumps({"n": 1, "pad": PAD})
    await parser.parse(raw)
    first = parser.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    assert (await parser.parse(raw))["n"] == 1  # parsed on the loop if the child was found dead mid-exchange
    assert (await parser.parse(raw))["n"] == 1
    assert parser.pid not in (None, first)


@pytest.mark.parametrize("failing", [(subprocess, "Popen"), (socket, "socketpair")], ids=["popen", "socketpair"])
async def test_a_failed_start_is_tried_again_after_a_back_off_and_large_bodies_are_not_parsed_on_the_loop_meanwhile(
    monkeypatch: pytest.MonkeyPatch, failing: tuple[object, str]
) -> None:
    """One EMFILE at the child's start turned it off for the worker's life: from then on a million-key body cost
    the loop ~0.5 s before its 400 (and an EMFILE from socketpair() reached the client as a 500)."""
    starts: list[str] = []
    module, name = failing
    real = getattr(module, name)

    def emfile_twice(*args: Any, **kwargs: Any) -> Any:
        starts.append("tried")
        if len(starts) <= 2:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))  # the kernel's answer when descriptors run out
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, emfile_twice)
    clock = ManualClock()
    parser = ParserProcess(clock=clock)
    hostile = _bad_bodies()["too many members"]  # its byte counts need the child's exact count
    cheap = orjson.dumps({"n": 1, "pad": PAD})
    try:
        for back_off_s in (1, 2):  # doubled after the second failure
            with pytest.raises(ServiceUnavailable) as refused:
                await parser.parse(hostile)
            assert refused.value.headers == {"retry-after": str(back_off_s)}
            with pytest.raises(ServiceUnavailable):  # not tried again within the back-off
                await parser.parse(hostile)
            assert (await parser.parse(cheap))["n"] == 1  # a cheap body is parsed on the loop meanwhile
            assert len(starts) == back_off_s and parser.pid is None
            clock.advance(back_off_s)
        with pytest.raises(BadRequest) as answered:
            await parser.parse(hostile)
        assert answered.value.code == "too_many_members"
        assert len(starts) == 3 and parser.pid not in (None, os.getpid())  # the child answered
    finally:
        await parser.close()


async def test_close_stops_the_child() -> None:
    parser = ParserProcess()
    await parser.parse(orjson.dumps({"pad": PAD}))
    pid = parser.pid
    assert pid is not None
    await parser.close()
    assert parser.pid is None
    with pytest.raises(ProcessLookupError):  # exited and reaped
        os.kill(pid, 0)
