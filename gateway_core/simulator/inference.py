"""The inference paths (chat, completions, embeddings): from a request to the `SimReply` Azure OpenAI would give.

Checks run in Azure's order (path, key, api-version, body, ``stream_options``, deployment); then the request
meets its fault, the reply is generated, the TPM limit is applied, and the time to first byte is set.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from .answers import BadEmbeddingsRequest, build_answer, embeddings_response
from .faults import TokensPerMinute, fault_reply, pick_fault
from .records import RequestRecord
from .reply import Headers, SimReply, azure_error
from .settings import Fault, SimConfig, SimDeployment
from .sse import sse_stream

OPERATIONS = ("chat/completions", "completions", "embeddings")
# Azure OpenAI answers 400 to stream_options on api-versions before this one.
STREAM_OPTIONS_SINCE = "2024-09-01"
_NOT_FOUND = azure_error(404, "404", "Resource not found")


@dataclass(slots=True)
class SimState:
    """What the simulator keeps between requests; ``POST /++/config`` replaces the config (not the RNG)."""

    config: SimConfig
    rng: random.Random = field(init=False)
    tpm: TokensPerMinute = field(default_factory=TokensPerMinute)
    deployments: dict[str, SimDeployment] = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)
        self.reconfigure(self.config)

    def reconfigure(self, config: SimConfig) -> None:
        self.config = config
        self.deployments = {d.name: d for d in config.deployments}

    def region_headers(self) -> Headers:
        """What Azure adds to each answer: the region that served it and a request id."""
        return (("x-ms-region", self.config.region), ("apim-request-id", str(uuid.uuid4())))


@dataclass(frozen=True, slots=True)
class Incoming:
    """One request as the simulator received it (headers lower-cased, query decoded)."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes


def parse_path(path: str) -> tuple[str | None, str | None]:
    """(deployment from the path or None, operation or None) for Azure's and the OpenAI v1 paths."""
    if path.startswith("/openai/deployments/"):
        deployment, _, operation = path[len("/openai/deployments/") :].partition("/")
        return deployment, operation if operation in OPERATIONS else None
    for prefix in ("/v1/", "/openai/v1/"):
        if path.startswith(prefix) and path[len(prefix) :] in OPERATIONS:
            return None, path[len(prefix) :]
    return None, None


def key_refusal(config: SimConfig, headers: Mapping[str, str]) -> SimReply | None:
    """Azure's 401 if a key is configured and the caller did not send it (``api-key`` or a bearer token)."""
    if config.api_key is None or _credential(headers) == config.api_key:
        return None
    return azure_error(401, "401", "Access denied due to invalid subscription key or wrong API endpoint.")


def infer(state: SimState, request: Incoming, record: RequestRecord) -> SimReply:
    """The reply to an inference request; notes the body's ``model`` field in ``record`` once it is parsed."""
    config = state.config
    deployment_name, operation = parse_path(request.path)
    if request.method != "POST" or operation is None:
        return _NOT_FOUND
    refusal = key_refusal(config, request.headers)
    if refusal is not None:
        return refusal
    azure_path = request.path.startswith("/openai/deployments/")
    if azure_path and "api-version" not in request.query:
        return _NOT_FOUND
    try:
        body: Any = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        return azure_error(400, "BadRequest", "Request body must be a JSON object.")
    record["model"] = body.get("model")
    if "stream_options" in body and azure_path and request.query.get("api-version", "") < STREAM_OPTIONS_SINCE:
        return azure_error(400, "BadRequest", "Unrecognized request argument supplied: stream_options")
    if deployment_name is None:
        deployment_name = str(body.get("model", ""))
    deployment = state.deployments.get(deployment_name)
    if deployment is None:
        if state.deployments:
            message = f"The API deployment {deployment_name} does not exist."
            return azure_error(404, "DeploymentNotFound", message)
        deployment = SimDeployment(name=deployment_name)
    bad = _bad_control_header(request.headers)
    if bad is not None:
        return azure_error(400, "BadRequest", f"{bad} must be a non-negative number.")
    return _answer(state, operation, body, deployment, request.headers)


_NUMERIC_CONTROLS = (
    "x-aigw-sim-latency-ms",
    "x-aigw-sim-completion-tokens",
    "x-aigw-sim-retry-after",
    "x-aigw-sim-cached-tokens",
    "x-aigw-sim-reasoning-tokens",
)


def _bad_control_header(headers: Mapping[str, str]) -> str | None:
    """The first numeric x-aigw-sim-* header whose value is not a finite number >= 0 (a 400, not a crash)."""
    for name in _NUMERIC_CONTROLS:
        value = headers.get(name)
        if value is None:
            continue
        try:
            number = float(value)
        except ValueError:
            return name
        if not 0 <= number < float("inf") or (name.endswith("-tokens") and not value.strip().isdigit()):
            return name
    return None


def _answer(
    state: SimState, operation: str, body: dict[str, Any], deployment: SimDeployment, headers: Mapping[str, str]
) -> SimReply:
    config = state.config
    fault = pick_fault(state.rng, (*deployment.faults, *config.faults), headers)
    ttft_s = (deployment.ttft_ms if deployment.ttft_ms is not None else config.ttft_ms) / 1000
    if "x-aigw-sim-latency-ms" in headers:
        ttft_s += float(headers["x-aigw-sim-latency-ms"]) / 1000
    if fault is not None and fault.kind == "slow":
        ttft_s += fault.extra_latency_ms / 1000
    elif fault is not None and fault.kind != "drop":
        return fault_reply(fault)
    model = deployment.model or deployment.name
    if operation == "embeddings":
        try:
            payload = embeddings_response(body, model, deployment.embedding_dimensions)
        except BadEmbeddingsRequest as exc:
            return replace(azure_error(400, "BadRequest", str(exc)), delay_s=ttft_s)
        return SimReply(200, orjson.dumps(payload), state.region_headers(), delay_s=ttft_s)
    target = (
        int(headers.get("x-aigw-sim-completion-tokens", 0)) or deployment.completion_tokens or config.completion_tokens
    )
    answer = build_answer(operation, body, model, target)
    _report_details(answer.response["usage"], headers)
    wait_s = state.tpm.wait_s(deployment.name, deployment.tpm_limit or config.tpm_limit, answer.total_tokens)
    if wait_s is not None:
        return fault_reply(Fault(kind="429", retry_after_s=wait_s))
    dropped = fault is not None and fault.kind == "drop"
    if body.get("stream") is True:
        options = body.get("stream_options")
        include_usage = (
            isinstance(options, dict)
            and bool(options.get("include_usage"))
            and config.stream_usage
            and headers.get("x-aigw-sim-no-usage") != "1"
        )
        tps = deployment.tokens_per_s if deployment.tokens_per_s is not None else config.tokens_per_s
        stream = sse_stream(
            answer, chat=operation == "chat/completions", include_usage=include_usage, gap_s=1.0 / tps if tps else 0.0
        )
        headers_out = (("cache-control", "no-cache"), *state.region_headers())
        return SimReply(
            200, headers=headers_out, content_type="text/event-stream", delay_s=ttft_s, stream=stream, drop=dropped
        )
    # A connection that breaks did so before the region headers were written.
    reply_headers = () if dropped else state.region_headers()
    return SimReply(200, orjson.dumps(answer.response), reply_headers, delay_s=ttft_s, drop=dropped)


def _credential(headers: Mapping[str, str]) -> str | None:
    if "api-key" in headers:
        return headers["api-key"]
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value if scheme.lower() == "bearer" else None


def _report_details(usage: dict[str, Any], headers: Mapping[str, str]) -> None:
    """``x-aigw-sim-cached-tokens``/``-reasoning-tokens``: report that many of the prompt as cached and of the
    completion as reasoning (in ``*_tokens_details``, as Azure does), at most the whole."""
    cached, reasoning = headers.get("x-aigw-sim-cached-tokens"), headers.get("x-aigw-sim-reasoning-tokens")
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": min(int(cached), usage["prompt_tokens"])}
    if reasoning is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": min(int(reasoning), usage["completion_tokens"])}
