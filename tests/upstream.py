"""A tiny OpenAI-compatible upstream for odd backend behaviour: it keeps the raw bytes it received.

Its answers disagree with themselves on purpose: the text is three words ("one two three", 3 tokens) but the
reported usage is 700 completion tokens, so a test can tell whether the gateway counted the usage chunk or
the text. Served by the project's ``BackgroundServers`` (uvicorn on a thread), like the simulator in tests.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson

from aigw.serve import BackgroundServers

TEXT_WORDS = ("one", " two", " three")  # 3 tokens in o200k_base
USAGE = {"prompt_tokens": 5, "completion_tokens": 700, "total_tokens": 705}

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass
class Received:
    path: str
    query_string: str
    headers: dict[str, str]
    body: bytes
    peer: str = ""  # the client's address:port: one value across requests means one reused connection


@dataclass
class Recorder:
    """Records every request; answers ``status`` (200: a chat completion or its SSE stream)."""

    status: int = 200
    hang: bool = False  # never answer (until the client gives up)
    retry_after_s: int | None = None  # sent with a non-200 status
    finish_reason: str = "stop"
    gate: threading.Event | None = None  # when set: hold every answer until the test sets this event
    received: list[Received] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)  # set by each request received

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        peer = "{}:{}".format(*scope["client"]) if scope.get("client") else ""
        self.received.append(Received(scope["path"], scope["query_string"].decode("latin-1"), headers, body, peer))
        self.arrived.set()
        if self.gate is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.gate.wait)
        if self.hang:
            while (await receive())["type"] != "http.disconnect":  # until the gateway gives up
                pass
            return
        if self.status != 200:
            error = {"error": {"code": str(self.status), "message": "recorder says no"}}
            extra = [] if self.retry_after_s is None else [(b"retry-after", str(self.retry_after_s).encode())]
            await _send(send, self.status, "application/json", [orjson.dumps(error)], extra)
            return
        request = orjson.loads(body) if body else {}
        if request.get("stream") is True:
            options = request.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            await _send(send, 200, "text/event-stream", _sse(include_usage))
            return
        await _send(send, 200, "application/json", [orjson.dumps(_completion(self.finish_reason))])

    def reset(self) -> None:
        self.received.clear()
        self.arrived.clear()
        self.gate = None
        self.status, self.hang, self.retry_after_s, self.finish_reason = 200, False, None, "stop"

    def bodies(self) -> list[bytes]:
        return [r.body for r in self.received]


def _completion(finish_reason: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": "".join(TEXT_WORDS)}
    return {
        "id": "rec-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": USAGE,
    }


def _sse(include_usage: bool) -> list[bytes]:
    base = {"id": "rec-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}] + [{"content": w} for w in TEXT_WORDS]
    chunks = [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if include_usage:
        chunks.append({**base, "choices": [], "usage": USAGE})
    return [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]


async def _send(
    send: Send, status: int, content_type: str, parts: list[bytes], extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", content_type.encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    for part in parts:
        await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


@contextmanager
def serve_recorders(count: int = 1) -> Iterator[list[tuple[str, Recorder]]]:
    """``count`` recorders on free loopback ports: [(url, recorder)]."""
    servers = BackgroundServers()
    try:
        made = []
        for _ in range(count):
            recorder = Recorder()
            made.append((f"http://127.0.0.1:{servers.serve(recorder)}", recorder))
        yield made
    finally:
        servers.stop()
