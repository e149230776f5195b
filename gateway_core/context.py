"""The small types the pipeline speaks: request in, response out, and one context in between.

No framework objects live here: the host adapters (ASGI, Azure Functions) translate to and from these.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import PipelineOrderError


@dataclass(slots=True, frozen=True)
class GatewayRequest:
    """An HTTP request as the host adapter received it.

    ``headers`` has lower-case names. ``body_size`` is the number of body bytes the client sent as far as the
    adapter read them: an adapter stops reading past the configured limit, so ``body_size > len(body)``
    means the body was too large and was not read in full.
    """

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes = b""
    body_size: int = 0
    client_ip: str = ""
    query_string: str = ""  # the raw query, for endpoints that refuse a repeated parameter (/usage/*)

    def with_body(self, body: bytes, size: int) -> GatewayRequest:
        """This head with its body: ``dataclasses.replace(self, body=body, body_size=size)`` at a third of its
        cost (``replace`` inspects every field on each call); tests/unit/test_asgi_adapter.py checks the two agree."""
        return GatewayRequest(
            method=self.method,
            path=self.path,
            query=self.query,
            headers=self.headers,
            body=body,
            body_size=size,
            client_ip=self.client_ip,
            query_string=self.query_string,
        )


# The head chain's answer for "the head is fine, read the body" (Gateway.check_head turns it into a CheckedHead);
# the usage policy records nothing for it: the request is recorded once its body has gone through the pipeline.
HEAD_CHECKED = 100


@dataclass(slots=True)
class GatewayResponse:
    """A response: either a complete ``body`` or a ``stream`` of byte chunks (SSE), never both."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


class Surface(enum.Enum):
    """Which wire format the client spoke."""

    AZURE = "azure"  # /openai/deployments/{deployment}/...?api-version=
    OPENAI = "openai"  # /v1/... and /openai/v1/..., the deployment named by the body's "model"


class EndpointKind(enum.Enum):
    INFERENCE = "inference"
    HEALTHZ = "healthz"
    STATUS = "status"
    LIST_DEPLOYMENTS = "list_deployments"
    USAGE_PRICES = "usage_prices"
    USAGE_RECORDS = "usage_records"
    USAGE_SUMMARY = "usage_summary"


@dataclass(slots=True, frozen=True)
class Endpoint:
    """What a path resolved to. ``operation`` is the backend path tail, e.g. ``chat/completions``."""

    kind: EndpointKind
    surface: Surface | None = None
    operation: str = ""
    deployment: str | None = None  # from the path (Azure surface); the OpenAI surface reads it from the body
    public: bool = False  # no authentication needed (liveness)


@dataclass(slots=True, frozen=True)
class Principal:
    """Who is calling: from a gateway key (JWTs would produce the same principal)."""

    user: str
    tenant: str
    key_id: str | None = None
    roles: tuple[str, ...] = ()
    admin: bool = False
    # None: every deployment; otherwise only these gateway deployment names.
    allowed_deployments: frozenset[str] | None = None

    def may_use(self, deployment: str) -> bool:
        return self.allowed_deployments is None or deployment in self.allowed_deployments


@dataclass(slots=True)
class Attempt:
    """One try at one backend, kept for logs, failover decisions and accounting."""

    backend: str
    status: int | None = None
    error: str | None = None
    elapsed_ms: float = 0.0
    # The request was sent, then timed out or was cut: the backend may have generated (and billed) an answer.
    maybe_billed: bool = False


class UsageSource(enum.StrEnum):
    """Where a request's actual tokens came from (empty: no answer yet, or none)."""

    NONE = ""
    BACKEND = "backend"  # the backend's usage (a JSON answer's, a stream's final chunk)
    COUNTED = "counted"  # a stream that ended without usage: counted from its text
    CACHE = "cache"  # a cached answer's recorded usage


class CacheStatus(enum.StrEnum):
    """What the cache did for a request, as the ``x-aigw-cache`` header shows it (empty: caching off)."""

    NONE = ""
    HIT = "HIT"
    SEMANTIC_HIT = "SEMANTIC-HIT"
    MISS = "MISS"
    BYPASS = "BYPASS"


@dataclass(slots=True)
class TokenUsage:
    """Tokens of one request: the estimate admitted before the call, and the actuals after it."""

    encoding: str = ""
    prompt_estimate: int = 0  # counted with tiktoken before the call
    estimate: int = 0  # prompt + n x max completion tokens: what limits reserve
    prompt: int | None = None  # actuals: from the backend's usage, or counted from a stream's text
    completion: int | None = None
    cached_prompt: int = 0  # part of prompt: prompt_tokens_details.cached_tokens (billed at the cached price)
    reasoning: int = 0  # part of completion: completion_tokens_details.reasoning_tokens
    source: UsageSource = UsageSource.NONE
    usage_injected: bool = False  # aigw asked for stream usage; the client did not, so it is stripped

    @property
    def actual_total(self) -> int | None:
        if self.prompt is None and self.completion is None:
            return None
        return (self.prompt or 0) + (self.completion or 0)


@dataclass(slots=True)
class RequestContext:
    """The one object that flows through every policy of the pipeline."""

    request: GatewayRequest
    request_id: str
    started_s: float
    endpoint: Endpoint | None = None
    principal: Principal | None = None
    deployment: str | None = None
    api_version: str | None = None
    body_json: dict[str, Any] | None = None
    body_modified: bool = False  # body_json differs from the client's bytes (e.g. stream_options added)
    stream: bool = False
    tokens: TokenUsage = field(default_factory=TokenUsage)
    backend: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    cache_status: CacheStatus = CacheStatus.NONE
    cache_score: float | None = None  # similarity of a semantic hit
    # The limits policy's admission, planned early so the cache can make it in its lookup's round trip (its
    # storage.ports.AdmissionAhead); only the limits policy reads it back.
    admission: object | None = None

    # What a policy needs from the ones before it, asked for by name: out of order, the request fails with a
    # 500 that names the missing field (and the chain's wiring is the bug), rather than with an AttributeError.

    def require_endpoint(self) -> Endpoint:
        """The resolved endpoint (set first, by the endpoint resolver)."""
        if self.endpoint is None:
            raise PipelineOrderError("endpoint")
        return self.endpoint

    def require_principal(self) -> Principal:
        """The caller (set by the auth policy)."""
        if self.principal is None:
            raise PipelineOrderError("principal")
        return self.principal

    def require_deployment(self) -> str:
        """The gateway deployment name (set by the validate policy)."""
        if self.deployment is None:
            raise PipelineOrderError("deployment")
        return self.deployment

    def require_body(self) -> dict[str, Any]:
        """The parsed JSON body (set by the validate policy)."""
        if self.body_json is None:
            raise PipelineOrderError("body")
        return self.body_json
