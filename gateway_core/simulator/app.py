"""The simulator's HTTP surface, a raw ASGI app (served by uvicorn in `aigw simulate`).

Fault injection by header (each overrides the deployment's configured faults):
``x-aigw-sim-fault: 429|500|503|slow|drop``, ``x-aigw-sim-retry-after: <s>``, ``x-aigw-sim-latency-ms: <ms>``
(added before the first byte), ``x-aigw-sim-completion-tokens: <n>``, ``x-aigw-sim-no-usage: 1`` (a stream ignores
``stream_options.include_usage``, as some OpenAI-compatible servers do). ``GET /_sim/requests`` lists the
recent requests it received (method, path, query, headers, and the undecoded ``raw_path`` and
``query_string``), so tests can see what a gateway sent upstream.
``GET /++/config`` shows the settings and ``POST /++/config`` changes them while it runs (a JSON object merged
into them: ``{"faults": [{"kind": "429", "retry_after_s": 5}]}`` throttles every deployment, ``{"faults": []}``
heals it), as Microsoft's Azure OpenAI API simulator does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import orjson

from .generate import (
    chat_prompt_tokens,
    count_tokens,
    embed,
    embedding_inputs,
    encode_embedding,
    forced_tool,
    prompt_text_tokens,
    reply_words,
    tool_arguments,
)
from .settings import Fault, SimConfig, SimDeployment

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
_OPERATIONS = ("chat/completions", "completions", "embeddings")
_MAX_EMBEDDING_INPUTS = 2048  # Azure OpenAI refuses longer input lists with a 400
# Azure OpenAI answers 400 to stream_options on api-versions before this one.
_STREAM_OPTIONS_SINCE = "2024-09-01"


class _Dropped(Exception):
    """Raised after a partial response: the server then aborts the connection, as a crashed backend would."""


class _Watch:
    """Notices a client that hangs up mid-stream, so the simulator stops as a real backend would."""

    def __init__(self, receive: Receive, record: dict[str, Any]) -> None:
        self._receive = receive
        self.record = record
        self.disconnected = False
        self._gone = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _wait(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.disconnected = True
        self._gone.set()

    async def sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` (inside ``async with``); False if the client hung up meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._gone.wait(), seconds)
        return not self.disconnected

    async def __aenter__(self) -> _Watch:
        self._task = asyncio.ensure_future(self._wait())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class SimulatorApp:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self._deployments = {d.name: d for d in config.deployments}
        self._tokens_in_minute: dict[tuple[str, int], int] = {}
        self._rng = random.Random(config.seed)
        self.requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=config.record_requests)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        body = await _read_all(receive)
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/_sim/requests":
            if method == "DELETE":
                self.requests.clear()
            await _json(send, 200, {"requests": list(self.requests)})
            return
        if path == "/_sim/health":
            await _json(send, 200, {"status": "ok", "region": self.config.region})
            return
        if path == "/++/config":
            await self._runtime_config(method, body, send)
            return
        record: dict[str, Any] = {"method": method, "path": path, "query": query, "headers": headers}
        # The bytes as they came (before the server decoded %XX), so tests see exactly what a gateway sent.
        record["raw_path"] = scope.get("raw_path", path.encode()).decode("latin-1")
        record["query_string"] = scope.get("query_string", b"").decode("latin-1")
        self.requests.append(record)
        if method == "GET" and path in ("/openai/models", "/v1/models", "/openai/deployments"):
            await self._list(headers, send)
            return
        await self._inference(method, path, query, headers, body, send, _Watch(receive, record))

    async def _inference(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: bytes,
        send: Send,
        watch: _Watch,
    ) -> None:
        deployment_name, operation = _parse_path(path, body)
        if method != "POST" or operation is None:
            await _error(send, 404, "404", "Resource not found")
            return
        if not await self._key_accepted(headers, send):
            return
        if path.startswith("/openai/deployments/") and "api-version" not in query:
            await _error(send, 404, "404", "Resource not found")
            return
        try:
            request = orjson.loads(body)
            assert isinstance(request, dict)
        except (orjson.JSONDecodeError, AssertionError):
            await _error(send, 400, "BadRequest", "Request body must be a JSON object.")
            return
        watch.record["model"] = request.get("model")
        version = query.get("api-version", "")
        if "stream_options" in request and path.startswith("/openai/deployments/") and version < _STREAM_OPTIONS_SINCE:
            await _error(send, 400, "BadRequest", "Unrecognized request argument supplied: stream_options")
            return
        if deployment_name is None:
            deployment_name = str(request.get("model", ""))
        deployment = self._deployments.get(deployment_name)
        if deployment is None:
            if self._deployments:
                await _error(send, 404, "DeploymentNotFound", f"The API deployment {deployment_name} does not exist.")
                return
            deployment = SimDeployment(name=deployment_name)
        fault = self._fault(deployment, headers)
        ttft_s = (deployment.ttft_ms if deployment.ttft_ms is not None else self.config.ttft_ms) / 1000
        if "x-aigw-sim-latency-ms" in headers:
            ttft_s += float(headers["x-aigw-sim-latency-ms"]) / 1000
        if fault is not None:
            if fault.kind == "slow":
                ttft_s += fault.extra_latency_ms / 1000
            elif fault.kind != "drop":
                await self._fail(send, fault, headers)
                return
        model = deployment.model or deployment.name
        if operation == "embeddings":
            await _sleep(ttft_s)
            await self._embeddings(send, request, deployment, model)
            return
        answer = self._answer(operation, request, deployment, model, headers)
        wait_s = self._over_tpm(deployment, answer["response"]["usage"]["total_tokens"])
        if wait_s is not None:
            await self._fail(send, Fault(kind="429", retry_after_s=wait_s), headers)
            return
        if request.get("stream") is True:
            dropped = fault is not None and fault.kind == "drop"
            options = request.get("stream_options")
            include_usage = (
                isinstance(options, dict)
                and bool(options.get("include_usage"))
                and self.config.stream_usage
                and headers.get("x-aigw-sim-no-usage") != "1"
            )
            async with watch:
                await self._stream(
                    send, operation, answer, deployment, ttft_s, watch, include_usage=include_usage, dropped=dropped
                )
            return
        async with watch:
            if not await watch.sleep(ttft_s):
                watch.record["outcome"] = "client_disconnected"  # a real backend stops generating too
                return
        payload = orjson.dumps(answer["response"])
        if fault is not None and fault.kind == "drop":
            await _start(send, 200, "application/json")
            await send({"type": "http.response.body", "body": payload[: len(payload) // 2], "more_body": True})
            raise _Dropped("simulated dropped connection")
        await _start(send, 200, "application/json", self._region_headers())
        await send({"type": "http.response.body", "body": payload})
        watch.record["outcome"] = "completed"

    async def _runtime_config(self, method: str, body: bytes, send: Send) -> None:
        if method == "POST":
            try:
                patch = orjson.loads(body)
                assert isinstance(patch, dict)
                config = SimConfig.model_validate({**self.config.model_dump(), **patch})
            except (orjson.JSONDecodeError, AssertionError, ValueError) as exc:
                await _error(send, 400, "BadRequest", f"invalid simulator settings: {exc}")
                return
            self.config = config
            self._deployments = {d.name: d for d in config.deployments}
        await _json(send, 200, self.config.model_dump(mode="json"))

    async def _key_accepted(self, headers: dict[str, str], send: Send) -> bool:
        """True if the caller sent the configured key; otherwise answers 401 as Azure OpenAI does."""
        if self.config.api_key is None or _credential(headers) == self.config.api_key:
            return True
        await _error(send, 401, "401", "Access denied due to invalid subscription key or wrong API endpoint.")
        return False

    async def _list(self, headers: dict[str, str], send: Send) -> None:
        # What a health probe calls: free of tokens, but authenticated, faulted and throttled like the rest.
        if not await self._key_accepted(headers, send):
            return
        fault = self._fault(SimDeployment(name="*"), headers)
        if fault is not None and fault.kind in ("429", "500", "503"):
            await self._fail(send, fault, headers)
            return
        data = [{"id": d.name, "object": "model", "status": "succeeded"} for d in self.config.deployments]
        await _json(send, 200, {"object": "list", "data": data}, self._region_headers())

    def _over_tpm(self, deployment: SimDeployment, tokens: int) -> float | None:
        """Seconds until the minute renews if ``tokens`` more would pass the deployment's TPM limit, else None."""
        limit = deployment.tpm_limit or self.config.tpm_limit
        if limit is None:
            return None
        now = time.time()
        window = int(now // 60)
        key = (deployment.name, window)
        used = self._tokens_in_minute.get(key, 0)
        if used + tokens > limit:
            return (window + 1) * 60 - now
        self._tokens_in_minute = {k: v for k, v in self._tokens_in_minute.items() if k[1] == window}
        self._tokens_in_minute[key] = used + tokens
        return None

    def _fault(self, deployment: SimDeployment, headers: dict[str, str]) -> Fault | None:
        forced = headers.get("x-aigw-sim-fault")
        if forced:
            if forced not in ("429", "500", "503", "slow", "drop"):
                return None
            retry = float(headers.get("x-aigw-sim-retry-after", "1"))
            return Fault(kind=forced, retry_after_s=retry)  # type: ignore[arg-type]
        for fault in (*deployment.faults, *self.config.faults):
            if self._rng.random() < fault.rate:
                return fault
        return None

    async def _fail(self, send: Send, fault: Fault, headers: dict[str, str]) -> None:
        retry_after = fault.retry_after_s
        extra = [("retry-after", str(max(1, round(retry_after)))), ("retry-after-ms", str(int(retry_after * 1000)))]
        if fault.kind == "429":
            message = (
                "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have "
                f"exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after "
                f"{max(1, round(retry_after))} seconds."
            )
            await _error(send, 429, "429", message, [*extra, ("x-ratelimit-remaining-tokens", "0")])
        elif fault.kind == "503":
            await _error(
                send, 503, "ServiceUnavailable", "The service is temporarily unable to process your request.", extra
            )
        else:
            await _error(send, 500, "InternalServerError", "The server had an error while processing your request.")

    def _region_headers(self) -> list[tuple[str, str]]:
        return [("x-ms-region", self.config.region), ("apim-request-id", str(uuid.uuid4()))]

    def _answer(
        self, operation: str, request: dict[str, Any], deployment: SimDeployment, model: str, headers: dict[str, str]
    ) -> dict[str, Any]:
        """The complete response, plus the reply's words for streaming."""
        target = (
            int(headers.get("x-aigw-sim-completion-tokens", 0))
            or deployment.completion_tokens
            or self.config.completion_tokens
        )
        limit = request.get("max_completion_tokens") or request.get("max_tokens")
        finish = "stop"
        if isinstance(limit, int) and 0 < limit <= target:
            target, finish = limit, "length"
        requested_n = request.get("n")
        n = requested_n if isinstance(requested_n, int) and requested_n > 0 else 1
        if operation == "chat/completions":
            prompt_tokens = chat_prompt_tokens(request.get("messages"), model)
            seed = orjson.dumps(request.get("messages")).decode()
        else:
            prompt_tokens = prompt_text_tokens(request.get("prompt"), model)
            seed = orjson.dumps(request.get("prompt")).decode()
        words = reply_words(seed, target)
        text = " ".join(words)
        tool = forced_tool(request) if operation == "chat/completions" else None
        pieces = tool_arguments(words) if tool is not None else [w if i == 0 else " " + w for i, w in enumerate(words)]
        call_id = f"call_{uuid.uuid4().hex[:24]}"
        if tool is not None:
            # The reply is a forced tool call: its name and arguments are what the model generated (and is billed).
            completion_tokens = (count_tokens(tool, model) + count_tokens("".join(pieces), model)) * n
            finish = "tool_calls" if finish == "stop" else finish
        else:
            completion_tokens = count_tokens(text, model) * n
        created = int(time.time())
        if operation == "chat/completions":
            message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
            if tool is not None:
                call = {"id": call_id, "type": "function", "function": {"name": tool, "arguments": "".join(pieces)}}
                message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}
            choices: list[dict[str, Any]] = [
                {
                    "index": i,
                    "message": message,
                    "finish_reason": finish,
                    "logprobs": None,
                    "content_filter_results": {},
                }
                for i in range(n)
            ]
            rid, obj = f"chatcmpl-{uuid.uuid4().hex[:24]}", "chat.completion"
        else:
            choices = [{"index": i, "text": text, "finish_reason": finish, "logprobs": None} for i in range(n)]
            rid, obj = f"cmpl-{uuid.uuid4().hex[:24]}", "text_completion"
        response = {
            "id": rid,
            "object": obj,
            "created": created,
            "model": model,
            "system_fingerprint": "fp_aigw_sim",
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return {"response": response, "pieces": pieces, "finish": finish, "n": n, "tool": tool, "call_id": call_id}

    async def _stream(
        self,
        send: Send,
        operation: str,
        answer: dict[str, Any],
        deployment: SimDeployment,
        ttft_s: float,
        watch: _Watch,
        *,
        include_usage: bool,
        dropped: bool,
    ) -> None:
        response = answer["response"]
        tool: str | None = answer["tool"]
        tps = deployment.tokens_per_s if deployment.tokens_per_s is not None else self.config.tokens_per_s
        gap_s = 1.0 / tps if tps > 0 else 0.0
        chat = operation == "chat/completions"
        base = {
            "id": response["id"],
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": response["created"],
            "model": response["model"],
            "system_fingerprint": "fp_aigw_sim",
        }
        await _sleep(ttft_s)
        await _start(send, 200, "text/event-stream", [("cache-control", "no-cache"), *self._region_headers()])

        async def event(choices: list[dict[str, Any]], usage: Any = None) -> None:
            chunk = {**base, "choices": choices}
            if include_usage:
                chunk["usage"] = usage
            await send(
                {"type": "http.response.body", "body": b"data: " + orjson.dumps(chunk) + b"\n\n", "more_body": True}
            )

        n = answer["n"]
        if chat:
            first: dict[str, Any] = {"role": "assistant", "content": ""}
            if tool is not None:
                call = {
                    "index": 0,
                    "id": answer["call_id"],
                    "type": "function",
                    "function": {"name": tool, "arguments": ""},
                }
                first = {"role": "assistant", "content": None, "tool_calls": [call]}
            await event([{"index": i, "delta": first, "finish_reason": None, "logprobs": None} for i in range(n)])
        pieces: list[str] = answer["pieces"]
        for position, piece in enumerate(pieces):
            if watch.disconnected:
                watch.record["outcome"] = "client_disconnected"
                return
            if dropped and position == len(pieces) // 2:
                raise _Dropped("simulated dropped connection")
            choices: list[dict[str, Any]]
            if chat:
                delta: dict[str, Any] = {"content": piece}
                if tool is not None:
                    delta = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
                choices = [{"index": i, "delta": delta, "finish_reason": None, "logprobs": None} for i in range(n)]
            else:
                choices = [{"index": i, "text": piece, "finish_reason": None, "logprobs": None} for i in range(n)]
            await event(choices)
            if gap_s:
                await asyncio.sleep(gap_s)
        finish = answer["finish"]
        if chat:
            await event([{"index": i, "delta": {}, "finish_reason": finish, "logprobs": None} for i in range(n)])
        else:
            await event([{"index": i, "text": "", "finish_reason": finish, "logprobs": None} for i in range(n)])
        if include_usage:
            chunk = {**base, "choices": [], "usage": response["usage"]}
            await send(
                {"type": "http.response.body", "body": b"data: " + orjson.dumps(chunk) + b"\n\n", "more_body": True}
            )
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        watch.record["outcome"] = "completed"

    async def _embeddings(self, send: Send, request: dict[str, Any], deployment: SimDeployment, model: str) -> None:
        texts = embedding_inputs(request.get("input"))
        if not texts:
            await _error(send, 400, "BadRequest", "'input' must be a string or a list of strings or tokens.")
            return
        if len(texts) > _MAX_EMBEDDING_INPUTS:
            await _error(
                send, 400, "BadRequest", f"Too many inputs. The max number of inputs is {_MAX_EMBEDDING_INPUTS}."
            )
            return
        requested_dims = request.get("dimensions")
        dims = (
            requested_dims
            if isinstance(requested_dims, int) and requested_dims > 0
            else deployment.embedding_dimensions
        )
        fmt = request.get("encoding_format") or "float"
        data = [
            {"object": "embedding", "index": i, "embedding": encode_embedding(embed(text, dims), fmt)}
            for i, text in enumerate(texts)
        ]
        tokens = sum(count_tokens(t, model) for t in texts)
        payload = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        await _start(send, 200, "application/json", self._region_headers())
        await send({"type": "http.response.body", "body": orjson.dumps(payload)})


def _parse_path(path: str, body: bytes) -> tuple[str | None, str | None]:
    """(deployment from the path or None, operation or None)."""
    if path.startswith("/openai/deployments/"):
        deployment, _, operation = path[len("/openai/deployments/") :].partition("/")
        return deployment, operation if operation in _OPERATIONS else None
    for prefix in ("/v1/", "/openai/v1/"):
        if path.startswith(prefix) and path[len(prefix) :] in _OPERATIONS:
            return None, path[len(prefix) :]
    return None, None


def _credential(headers: dict[str, str]) -> str | None:
    if "api-key" in headers:
        return headers["api-key"]
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value if scheme.lower() == "bearer" else None


async def _read_all(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


async def _start(send: Send, status: int, content_type: str, extra: list[tuple[str, str]] | None = None) -> None:
    headers = [(b"content-type", content_type.encode())]
    headers.extend((k.encode(), v.encode()) for k, v in extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def _json(send: Send, status: int, payload: Any, extra: list[tuple[str, str]] | None = None) -> None:
    await _start(send, status, "application/json", extra)
    await send({"type": "http.response.body", "body": orjson.dumps(payload)})


async def _error(send: Send, status: int, code: str, message: str, extra: list[tuple[str, str]] | None = None) -> None:
    # Azure OpenAI's error shape: code and message (no type/param).
    await _json(send, status, {"error": {"code": code, "message": message}}, extra)
