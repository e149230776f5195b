"""Counts prompt tokens before the call and sets the estimate that limits reserve.

For streams it asks the backend for a final usage chunk (``stream_options.include_usage``) when the client
did not, so the actual usage is known; that chunk is then stripped from what the client receives.
"""

from __future__ import annotations

from typing import Any

from ..catalogue import PoolTable
from ..config import LimitsSettings
from ..context import EndpointKind, GatewayResponse, RequestContext
from ..pipeline import Handler
from ..tokens.counting import prompt_tokens
from ..tokens.encodings import COMMON, encoding, encoding_name, load

# Azure OpenAI accepts stream_options from this api-version on; older versions answer 400 to it.
_STREAM_OPTIONS_SINCE = "2024-09-01"


class TokensPolicy:
    def __init__(self, pools: PoolTable, limits: LimitsSettings) -> None:
        self._pools = pools
        self._default_completion = limits.default_completion_tokens
        # Load (and seed offline) at start the encodings the configured deployments use, and only those (each
        # costs tens of MB per worker); a wildcard backend may be asked for anything: the common one at start,
        # another on first use (in a thread, see ``load``).
        names = {self._encoding_name(deployment) for deployment in pools.named_deployments()}
        if pools.has_wildcard or not names:
            names.add(COMMON)
        for name in sorted(names):
            encoding(name)

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse:
        endpoint = ctx.endpoint
        if endpoint is None or endpoint.kind is not EndpointKind.INFERENCE or ctx.body_json is None:
            return await call_next(ctx)
        body = ctx.body_json
        enc = await load(self._encoding_name(ctx.require_deployment()))
        tokens = ctx.tokens
        tokens.encoding = enc.name
        operation = endpoint.operation
        tokens.prompt_estimate = await prompt_tokens(operation, body, enc, len(ctx.request.body))
        tokens.estimate = tokens.prompt_estimate
        if operation != "embeddings":
            tokens.estimate += self._choices(body) * self._max_completion(body)
            if ctx.stream:
                self._ask_for_usage(ctx, body)
        return await call_next(ctx)

    def _encoding_name(self, deployment: str) -> str:
        ref = self._pools.deployment_ref(deployment)
        if ref is not None and ref.encoding:
            return ref.encoding
        return encoding_name(ref.model or ref.name if ref is not None else deployment)

    def _max_completion(self, body: dict[str, Any]) -> int:
        for field in ("max_completion_tokens", "max_tokens"):
            value = body.get(field)
            if isinstance(value, int) and value >= 0:
                return value
        return self._default_completion

    @staticmethod
    def _choices(body: dict[str, Any]) -> int:
        n = body.get("n")
        best_of = body.get("best_of")  # completions: best_of candidates are generated and billed
        counts = [v for v in (n, best_of) if isinstance(v, int) and v > 0]
        return max(counts, default=1)

    @staticmethod
    def _ask_for_usage(ctx: RequestContext, body: dict[str, Any]) -> None:
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            return
        if ctx.api_version is not None and ctx.api_version < _STREAM_OPTIONS_SINCE:
            return  # the backend would refuse the field; the usage will be counted from the streamed text
        body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        ctx.body_modified = True
        ctx.tokens.usage_injected = True
