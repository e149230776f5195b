"""The simulator's HTTP surface, a raw ASGI app (served by uvicorn in `aigw simulate`): its paths.

- ``POST /openai/deployments/{name}/{chat/completions|completions|embeddings}?api-version=...`` and the OpenAI
  v1 paths ``/v1/...`` and ``/openai/v1/...`` (deployment from the body's ``model``): inference.py.
- ``GET /openai/models``, ``/v1/models``, ``/openai/deployments``: the deployments list a health probe calls.
- ``GET /_sim/requests`` lists the recent requests it received (method, path, query, headers, the undecoded
  ``raw_path`` and ``query_string``, and the body as base64: records.py), so tests can see what a gateway sent
  upstream; ``DELETE`` clears them. ``GET /_sim/health`` says it is up.
- ``GET /++/config`` shows the settings and ``POST /++/config`` changes them while it runs (a JSON object merged
  into them: ``{"faults": [{"kind": "429", "retry_after_s": 5}]}`` throttles every deployment, ``{"faults": []}``
  heals it), as Microsoft's Azure OpenAI API simulator does.

Fault injection by header (each overrides the deployment's configured faults, faults.py):
``x-aigw-sim-fault: 429|500|503|slow|drop``, ``x-aigw-sim-retry-after: <s>``, ``x-aigw-sim-latency-ms: <ms>``
(added before the first byte), ``x-aigw-sim-completion-tokens: <n>``, ``x-aigw-sim-no-usage: 1`` (a stream ignores
``stream_options.include_usage``, as some OpenAI-compatible servers do), ``x-aigw-sim-cached-tokens: <n>`` and
``x-aigw-sim-reasoning-tokens: <n>`` (usage reports that many prompt tokens as cached, completion tokens as reasoning).
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from urllib.parse import parse_qsl

from .asgi import Receive, Scope, Send, Watch, read_body
from .faults import fault_reply, pick_fault
from .inference import Incoming, SimState, infer, key_refusal
from .records import RequestRecord, record_of
from .reply import SimReply, azure_error, json_reply, send_reply
from .settings import SimConfig, patched

_LISTINGS = ("/openai/models", "/v1/models", "/openai/deployments")


class SimulatorApp:
    def __init__(self, config: SimConfig) -> None:
        self._state = SimState(config)
        self.requests: collections.deque[RequestRecord] = collections.deque(maxlen=config.record_requests)

    @property
    def config(self) -> SimConfig:
        return self._state.config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        body = await read_body(receive)
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/_sim/requests":
            if method == "DELETE":
                self.requests.clear()
            await send_reply(send, json_reply(200, {"requests": list(self.requests)}))
            return
        if path == "/_sim/health":
            await send_reply(send, json_reply(200, {"status": "ok", "region": self.config.region}))
            return
        if path == "/++/config":
            await send_reply(send, self._runtime_config(method, body))
            return
        record = record_of(scope, headers, query, body, self.config.record_body_bytes)
        self.requests.append(record)
        if method == "GET" and path in _LISTINGS:
            await send_reply(send, self._listing(headers))
            return
        reply = infer(self._state, Incoming(method, path, query, headers, body), record)
        await send_reply(send, reply, Watch(receive, record))

    def _runtime_config(self, method: str, body: bytes) -> SimReply:
        if method == "POST":
            try:
                config = patched(self.config, body)
            except ValueError as exc:
                return azure_error(400, "BadRequest", f"invalid simulator settings: {exc}")
            self._state.reconfigure(config)
        shown = self.config.model_dump(mode="json", exclude={"api_key"})
        shown["api_key_set"] = self.config.api_key is not None  # the key itself is never shown
        return json_reply(200, shown)

    def _listing(self, headers: Mapping[str, str]) -> SimReply:
        # What a health probe calls: free of tokens, but authenticated, faulted and throttled like the rest.
        refusal = key_refusal(self.config, headers)
        if refusal is not None:
            return refusal
        fault = pick_fault(self._state.rng, self.config.faults, headers)
        if fault is not None and fault.kind in ("429", "500", "503"):
            return fault_reply(fault)
        data = [{"id": d.name, "object": "model", "status": "succeeded"} for d in self.config.deployments]
        return json_reply(200, {"object": "list", "data": data}, self._state.region_headers())


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
