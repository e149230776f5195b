"""The failover loop: try the deployment's targets in strategy order until one answers.

In this first version a target is skipped only when the request certainly never reached it (connection
refused or connect timeout); the routing issue adds failover on 429/5xx with Retry-After and circuit breaking.
"""

from __future__ import annotations

import random

from ..clock import Clock
from ..context import Attempt, GatewayResponse, RequestContext
from ..errors import BackendUnreachable, GatewayError
from ..providers.client import Unsent, UpstreamClient, forwarded_headers
from ..providers.credentials import Credential
from ..providers.wire import upstream_body, upstream_url
from ..tokens.usage import record_json_usage, scan_sse
from .health import HealthView
from .pools import PoolTable
from .strategies import by_priority_then_weight


class Forwarder:
    def __init__(
        self,
        pools: PoolTable,
        client: UpstreamClient,
        credentials: dict[str, Credential],
        health: HealthView,
        clock: Clock,
        rng: random.Random | None = None,
    ) -> None:
        self._pools = pools
        self._client = client
        self._credentials = credentials
        self._health = health
        self._clock = clock
        self._rng = rng or random.Random()

    async def __call__(self, ctx: RequestContext) -> GatewayResponse:
        assert ctx.endpoint is not None and ctx.deployment is not None
        targets = by_priority_then_weight(self._pools.targets(ctx.deployment), self._rng)
        last_error: GatewayError | None = None
        for target in targets:
            backend = target.backend
            attempt = Attempt(backend=backend.name)
            ctx.attempts.append(attempt)
            started = self._clock.monotonic_s()
            headers = forwarded_headers(ctx.request.headers, ctx.request_id)
            headers.extend(await self._credentials[backend.name].headers())
            try:
                response = await self._client.send(
                    backend,
                    upstream_url(target, ctx, ctx.endpoint.operation),
                    headers,
                    upstream_body(target, ctx),
                    stream=ctx.stream,
                )
            except GatewayError as exc:
                attempt.error = exc.message
                attempt.elapsed_ms = (self._clock.monotonic_s() - started) * 1000
                self._health.observe(backend.name, status=None, error=exc.message)
                if isinstance(exc, Unsent):
                    last_error = exc
                    continue
                ctx.backend = backend.name
                raise
            attempt.status = response.status
            attempt.elapsed_ms = (self._clock.monotonic_s() - started) * 1000
            self._health.observe(backend.name, status=response.status)
            ctx.backend = backend.name
            if response.status == 200:
                if response.stream is not None:
                    response.stream = scan_sse(response.stream, ctx.tokens)
                else:
                    record_json_usage(response.body, ctx.tokens)
            return response
        if last_error is not None and len(targets) > 1:
            raise BackendUnreachable(f"No backend for '{ctx.deployment}' could be reached; last: {last_error.message}")
        raise last_error or BackendUnreachable(f"No backend serves '{ctx.deployment}'.")
