"""The failover loop: try the deployment's eligible backends in strategy order until one answers.

A try moves on to the next backend on 429, a breaker failure status (5xx by default), 401/403 (aigw's own
credential refused), 408, a connection error or a timeout, within ``routing.max_attempts`` and
``routing.budget_s``. Other answers (a 400, a 404, a success) are final. When every eligible backend failed and
attempts and budget remain, the backends behind open breakers are tried too, soonest-to-reopen first. A
streaming answer is committed once its status is 200: the client has not seen a byte before that, and after it
a failure can only end the stream with an SSE error event (and counts against that backend's breaker).
Reading the answer's token usage is not this loop's job: the accounting policy around it does that.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from yarl import URL

from ..catalogue import PoolTable, Target
from ..clock import Clock
from ..config import RoutingSettings
from ..context import Attempt, GatewayResponse, RequestContext
from ..errors import BackendTimeout, BackendUnreachable, GatewayError, ServiceUnavailable, TokenLimitExceeded
from ..providers.client import UpstreamClient, forwarded_headers, maybe_billed
from ..providers.credentials import Credential
from ..providers.wire import upstream_body, upstream_url
from .health import HealthState, HealthView
from .retry_after import retry_after_s
from .strategies import by_priority_then_weight, region_first

_RETRY_STATUSES = frozenset({408, 429})
_CREDENTIAL_REFUSED = frozenset({401, 403})
_MAX_URLS = 1024  # upstream URLs kept parsed; a client cycling api-versions only makes the map start over


@dataclass(slots=True)
class _Tries:
    """What the tries of one request have spent and seen so far."""

    deadline_s: float
    tried: set[str] = field(default_factory=set)  # backends tried by this request
    count: int = 0
    last_response: GatewayResponse | None = None
    last_error: GatewayError | None = None


class Forwarder:
    def __init__(
        self,
        pools: PoolTable,
        client: UpstreamClient,
        credentials: dict[str, Credential],
        health: HealthView,
        clock: Clock,
        settings: RoutingSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._pools = pools
        self._client = client
        self._credentials = credentials
        self._health = health
        self._clock = clock
        self._settings = settings or RoutingSettings()
        self._rng = rng or random.Random()
        # (backend, upstream deployment, api-version, operation) -> the parsed URL: building and checking the
        # string, then aiohttp parsing it, cost ~15 us per try; the backends and their URLs are fixed config.
        self._urls: dict[tuple[str, str, str | None, str], URL] = {}

    def order(self, ctx: RequestContext) -> list[Target]:
        ordered = by_priority_then_weight(self._pools.targets(ctx.require_deployment()), self._rng)
        return region_first(ordered, self._region_of(ctx))

    def _region_of(self, ctx: RequestContext) -> str | None:
        headers = ctx.request.headers
        region = headers.get(self._settings.region_header.lower())
        if not region and self._settings.trust_forwarded_region:
            region = headers.get("x-forwarded-region")
        return region

    async def __call__(self, ctx: RequestContext) -> GatewayResponse:
        """The final answer (its x-aigw-attempts header is added by the errors policy, for errors too)."""
        targets = self.order(ctx)
        tries = _Tries(deadline_s=self._clock.monotonic_s() + self._settings.budget_s)
        answer = await self._try(ctx, targets, self._health.acquire, tries)
        if answer is not None:
            return answer
        none_eligible = tries.count == 0
        # Every eligible backend failed, or none was eligible. Rather than give up with attempts and budget to
        # spare, try the backends behind open breakers (one may have recovered, and a success closes its
        # breaker), soonest to reopen first, never one that asked us to wait: as Envoy's panic mode.
        untried = [t for t in targets if t.backend.name not in tries.tried]
        untried.sort(key=lambda t: self._health.open_until_s(t.backend.name))  # stable: strategy order kept
        answer = await self._try(ctx, untried, self._health.last_resort, tries)
        if answer is not None:
            return answer
        if none_eligible:
            raise self._none_available(ctx, targets)  # what the last-resort tries saw says less than this
        if tries.last_response is not None:
            if tries.last_response.status in _CREDENTIAL_REFUSED:
                raise self._credential_refused(ctx, tries.last_response.status)
            return self._soonest_retry(tries.last_response, targets)
        if tries.last_error is not None:
            raise tries.last_error
        raise self._none_available(ctx, targets)

    async def _try(
        self, ctx: RequestContext, targets: list[Target], may_try: Callable[[str, str], bool], tries: _Tries
    ) -> GatewayResponse | None:
        """Try the ``targets`` that ``may_try`` admits, in order: the final answer, or None if every try failed."""
        operation = ctx.require_endpoint().operation
        for target in targets:
            remaining = tries.deadline_s - self._clock.monotonic_s()
            if tries.count >= self._settings.max_attempts or remaining <= 0:
                break
            backend, deployment = target.backend, target.upstream_name
            if not may_try(backend.name, deployment):  # last, as it may take the breaker's one half-open slot
                continue
            tries.count += 1
            tries.tried.add(backend.name)
            attempt = Attempt(backend=backend.name)
            ctx.attempts.append(attempt)
            begin = self._clock.monotonic_s()
            sending = False
            try:
                headers = forwarded_headers(ctx.request.headers, ctx.request_id, simulator=backend.simulator)
                headers.extend(await self._credentials[backend.name].headers())
                sending = True
                response = await self._client.send(
                    backend,
                    self._url(target, ctx, operation),
                    headers,
                    upstream_body(target, ctx),
                    stream=ctx.stream,
                    budget_s=remaining,
                )
            except GatewayError as exc:
                attempt.error = exc.message
                attempt.maybe_billed = maybe_billed(exc)
                attempt.elapsed_ms = (self._clock.monotonic_s() - begin) * 1000
                # A generation that is merely slow (its status line came, or our budget was the limit) says
                # nothing about the backend's health; nor does a read timeout after the send (a non-stream
                # status line comes only when generation ends) while other live traffic there succeeds.
                slow = isinstance(exc, BackendTimeout) and (
                    exc.started
                    or remaining < backend.timeout_s
                    or (maybe_billed(exc) and self._health.live_success_within_interval(backend.name))
                )
                self._health.observe(
                    backend.name,
                    deployment,
                    status=None,
                    error=exc.message,
                    latency_ms=attempt.elapsed_ms,
                    counts=not slow,
                )
                ctx.backend, tries.last_error, tries.last_response = backend.name, exc, None
                continue
            except BaseException:
                # Cancelled (the client left) while the backend may be generating: keep its estimate charged.
                attempt.maybe_billed = sending
                self._health.release(backend.name)
                raise
            attempt.status = response.status
            attempt.elapsed_ms = (self._clock.monotonic_s() - begin) * 1000
            wait_s = retry_after_s(response.headers, self._clock.now_s()) if response.status == 429 else None
            self._health.observe(
                backend.name, deployment, status=response.status, latency_ms=attempt.elapsed_ms, retry_after_s=wait_s
            )
            ctx.backend = backend.name
            if self._retryable(backend.name, response.status):
                tries.last_response, tries.last_error = response, None
                continue
            if response.status == 200 and response.stream is not None:
                response.stream = self._watched(response.stream, target)
            return response
        return None

    def _url(self, target: Target, ctx: RequestContext, operation: str) -> URL:
        key = (target.backend.name, target.upstream_name, ctx.api_version, operation)
        url = self._urls.get(key)
        if url is None:
            url = URL(upstream_url(target, ctx, operation))  # only a URL that passed its checks is kept
            if len(self._urls) >= _MAX_URLS:
                self._urls.clear()
            self._urls[key] = url
        return url

    async def _watched(self, stream: AsyncIterator[bytes], target: Target) -> AsyncIterator[bytes]:
        """Relay ``stream``; a backend that breaks it off after its status line counts as failed for the breaker
        (the request cannot fail over any more, but the next ones should not go there)."""
        try:
            async for chunk in stream:
                yield chunk
        except GatewayError as exc:
            slow = isinstance(exc, BackendTimeout)  # stopped sending for a while: slow, not broken
            self._health.observe(
                target.backend.name, target.upstream_name, status=None, error=exc.message, counts=not slow
            )
            raise
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()  # closing the relay closes the upstream connection

    def _retryable(self, backend: str, status: int) -> bool:
        return status in _RETRY_STATUSES or self._health.is_failure(backend, status)

    def _credential_refused(self, ctx: RequestContext, status: int) -> GatewayError:
        # The client's key was fine: say whose credential failed, without passing the backend's 401 on as if it
        # were about the client's key.
        return BackendUnreachable(
            f"The backend for '{ctx.deployment}' refused the gateway's own credential (HTTP {status}); "
            "your key was accepted. The gateway's operator must fix the backend credential.",
            code="backend_credential_refused",
        )

    def _soonest_retry(self, response: GatewayResponse, targets: list[Target]) -> GatewayResponse:
        """The last backend's answer as it was; if every backend is throttled, with the soonest Retry-After."""
        if response.status != 429 or len(targets) < 2:
            return response  # a lone backend's own Retry-After is already the soonest
        waits = [self._health.throttled_for_s(t.backend.name, t.upstream_name) for t in targets]
        if waits and all(w > 0 for w in waits):
            soonest = min(waits)
            response.headers = [(k, v) for k, v in response.headers if k not in ("retry-after", "retry-after-ms")]
            response.headers.append(("retry-after", str(max(1, math.ceil(soonest)))))
            response.headers.append(("retry-after-ms", str(max(1, math.ceil(soonest * 1000)))))
        return response

    def _none_available(self, ctx: RequestContext, targets: list[Target]) -> GatewayError:
        """Every backend is out of rotation (and last-resort tries failed): 429 with the soonest Retry-After if
        all are throttled, else 503."""
        if not targets:
            return BackendUnreachable(f"No backend serves '{ctx.deployment}'.")
        states = {t.backend.name: self._health.state(t.backend.name, t.upstream_name) for t in targets}
        if all(state is HealthState.THROTTLED for state in states.values()):
            soonest = min(self._health.throttled_for_s(t.backend.name, t.upstream_name) for t in targets)
            return TokenLimitExceeded(
                f"Every backend for '{ctx.deployment}' is throttled; retry after {math.ceil(soonest)} seconds.",
                status=429,
                code="all_backends_throttled",
                headers={
                    "retry-after": str(max(1, math.ceil(soonest))),
                    "retry-after-ms": str(max(1, math.ceil(soonest * 1000))),
                },
            )
        # Backend names and health are for admin keys (as on /status); others get the bare fact.
        admin = ctx.principal is not None and ctx.principal.admin
        detail = f" ({', '.join(f'{name}: {state}' for name, state in states.items())})" if admin else ""
        return ServiceUnavailable(
            f"No backend for '{ctx.deployment}' is available right now{detail}.",
            code="no_backend_available",
            headers={"retry-after": "5"},
        )
