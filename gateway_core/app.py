"""Wiring: the one place the pipeline is built, in the order docs/architecture.md shows.

A ``Gateway`` is created once per process by a host adapter (ASGI server, Functions app), started inside the
running event loop, and then handles ``GatewayRequest``s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Mapping

import orjson

from .background import BackgroundTasks
from .catalogue import PoolTable
from .clock import Clock, SystemClock
from .config import GatewayConfig
from .context import (
    HEAD_CHECKED,
    Endpoint,
    EndpointKind,
    GatewayRequest,
    GatewayResponse,
    Principal,
    RequestContext,
    Surface,
)
from .errors import GatewayError, error_body
from .ids import new_id
from .pipeline import Handler, Policy, build_chain
from .policies.accounting import AccountingPolicy
from .policies.auth import AuthPolicy
from .policies.budgets import DeploymentPrices
from .policies.cache import CachePolicy
from .policies.errors import ErrorsPolicy
from .policies.limits import LimitsPolicy
from .policies.tokens import TokensPolicy
from .policies.usage import UsageRecorder
from .policies.validate import ValidatePolicy
from .providers.client import UpstreamClient
from .providers.credentials import Credential, credential_for
from .routes import resolve
from .routing.forward import Forwarder
from .routing.health import HealthView
from .routing.probes import Prober
from .routing.sync import HealthSync
from .storage.factory import cache_store, counter_store, default_url, health_store, usage_queue, usage_store
from .storage.ports import CacheStore, CounterStore, HealthStore, StorageError
from .storage.sqlite_cache import lookup_then_add
from .usage.api import usage_response, utc_today
from .usage.runtime import UsageRuntime
from .usage.sink import UsageSink

log = logging.getLogger("aigw")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_JSON = [("content-type", "application/json")]
_USAGE_KINDS = (EndpointKind.USAGE_PRICES, EndpointKind.USAGE_RECORDS, EndpointKind.USAGE_SUMMARY)


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        clock: Clock | None = None,
        env: Mapping[str, str] | None = None,
        background_probes: bool = False,
        usage_sink: UsageSink | None = None,
    ) -> None:
        """``background_probes``: run the active health probes and the health sync in loops (`aigw serve`; the
        Functions app probes and syncs from its timer trigger, and syncs after routed requests).
        ``usage_sink``: where usage records go (the gateway closes it); None, or ``usage.enabled: false``: none."""
        env = os.environ if env is None else env
        self.config = config
        self.clock = clock or SystemClock()
        self.pools = PoolTable(config)
        self.health = HealthView(self.clock, list(config.backends), config.routing.breaker)
        self.client = UpstreamClient()
        self._credentials: dict[str, Credential] = {b.name: credential_for(b, self.clock, env) for b in config.backends}
        forwarder = Forwarder(self.pools, self.client, self._credentials, self.health, self.clock, config.routing)
        # 9 route/failover, with the actual tokens of its final answer read by the accounting policy (8) around it.
        self._forward: Handler = build_chain([AccountingPolicy()], forwarder)
        self.tasks = BackgroundTasks()
        self.health_store: HealthStore = health_store(config.stores.health or default_url("health", env), env)
        self._health_sync = HealthSync(
            self.health, self.health_store, self.clock, config.routing.sync_interval_s, self.tasks
        )
        self.prober = Prober(
            list(config.backends), self.client, self._credentials, self.health, self.clock, config.routing.probe
        )
        self._background = background_probes
        self._background_probes = background_probes and config.routing.probe.enabled
        self._probe_loop: asyncio.Task[None] | None = None
        self._sync_loop: asyncio.Task[None] | None = None
        self._started = False
        self.closed = False
        # The counters store is opened only when there are rules to count for.
        self.counters: CounterStore | None = None
        if config.limits.rules:
            self.counters = counter_store(config.stores.counters or default_url("counters", env), env)
        self.cache: CacheStore | None = None
        if config.cache.enabled or any(rule.enabled for rule in config.cache.rules):
            self.cache = cache_store(
                config.stores.cache or default_url("cache", env), env, config.cache.max_store_bytes
            )
        # Usage: records batched to stores.usage by the writer (the default usage sink), summarised from its queue.
        self.prices = config.usage.price_table
        self.usage_runtime: UsageRuntime | None = None
        if config.usage.enabled:
            usage_url = config.stores.usage or default_url("usage", env)
            self.usage_runtime = UsageRuntime(usage_store(usage_url, env), usage_queue(usage_url, env), config.usage)
        tokens = TokensPolicy(self.pools, config.limits)
        if usage_sink is None and self.usage_runtime is not None:
            usage_sink = self.usage_runtime.writer
        self.usage: UsageRecorder | None = None
        if usage_sink is not None and config.usage.enabled:
            self.usage = UsageRecorder(config, self.pools, self.prices, usage_sink, self.clock)
        # 2 usage, just inside errors and outside endpoint resolution, so a 404 for an unknown path is recorded.
        usage: list[Policy] = [self.usage.policy()] if self.usage is not None else []
        internal_usage: list[Policy] = [self.usage.policy(internal=True)] if self.usage is not None else []
        prices = DeploymentPrices(self.pools, self.prices)
        limits = (
            LimitsPolicy(config.limits, self.counters, self.clock, self.tasks, prices)
            if self.counters is not None
            else None
        )
        # The gateway's own calls (the semantic cache's embeddings) are counted and limited as the caller's.
        self._internal: Handler = build_chain([*internal_usage, tokens, *([limits] if limits else [])], self._forward)
        auth = self._auth = AuthPolicy(config, env)
        self._validate = ValidatePolicy(config, self.pools)
        # The same first policies, run on the request head before the body is read (see check_head).
        resolve_endpoint = _ResolveEndpoint()
        self._check_head: Handler = build_chain([ErrorsPolicy(), *usage, resolve_endpoint, auth], _continue)
        policies: list[Policy] = [
            ErrorsPolicy(),  # 1 errors (outermost)
            *usage,  # 2 usage: records every request that gets this far, refusals at every later step included
            resolve_endpoint,
            auth,  # 3 auth
            self._validate,  # 4 validate (request transforms will sit beside it)
            tokens,  # 5 tokens
        ]
        if self.cache is not None:
            semantic = config.cache.semantic
            if semantic is not None:
                for name in (*semantic.deployments, semantic.embedding_deployment):
                    self.pools.check_exists(name)
            # Both stores SQLite here: a miss's lookup and its admission in one round trip on one thread.
            joint = lookup_then_add(self.cache, self.counters)
            ahead = limits.admit_ahead if limits is not None and joint is not None else None
            cache = CachePolicy(
                config.cache,
                self.cache,
                self.pools,
                self.clock,
                self.tasks,
                self.embed,
                admit_ahead=ahead,
                lookup_then_add=joint,
            )
            policies.append(cache)  # 6
        if limits is not None:
            policies.append(limits)  # 7 limits
        self._handle: Handler = build_chain(policies, self._dispatch)
        # A head check_head let through has its endpoint and caller already: the rest of the chain, run once.
        self._after_head: Handler = build_chain(
            [p for p in policies if p is not resolve_endpoint and p is not auth], self._dispatch
        )

    async def start(self) -> None:
        """Open connections; call inside the event loop that will serve requests."""
        self._started = True
        await self.client.start()
        try:
            await self.health_store.start()
        except StorageError as exc:
            log.error("health store unreachable at start, routing on this instance's view: %s", exc)
        if self._background_probes:
            self._probe_loop = asyncio.get_running_loop().create_task(self.prober.run_forever())
        if self._background:
            # Probe results, and other instances' windows, are shared even while this instance routes nothing.
            self._sync_loop = asyncio.get_running_loop().create_task(self._sync_forever())
        if self.cache is not None:
            try:
                await self.cache.start()
            except StorageError as exc:
                log.error("cache store unreachable at start, caching skipped until it answers: %s", exc)
        if self.usage_runtime is not None:
            await self.usage_runtime.start(background=self._background)
        if self.counters is not None:
            try:
                await self.counters.start()
            except StorageError as exc:
                # Start anyway: limited requests follow on_store_error (503 or unchecked) until the store answers.
                log.error("limits store unreachable at start (%s): %s", self.config.limits.on_store_error, exc)

    async def close(self) -> None:
        """Finish background work (limit settlements, health publishing) first, then close connections."""
        self.closed = True
        for loop in (self._probe_loop, self._sync_loop):
            if loop is not None:
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
        if self._started:  # a gateway never started (only checked) has learned nothing to publish
            await self.sync_health()  # publish what this instance learned last
        await self.tasks.drain()
        if self.usage is not None:
            await self.usage.close()  # after the drain: streams and settlements have ended
        if self.usage_runtime is not None:
            await self.usage_runtime.close()  # the writer flushes before its store closes
        await self._validate.close()
        await self.health_store.close()
        await self.client.close()
        if self.counters is not None:
            await self.counters.close()
        if self.cache is not None:
            await self.cache.close()
        for credential in self._credentials.values():
            await credential.close()

    async def check_head(self, request: GatewayRequest) -> GatewayResponse | CheckedHead:
        """Resolve the path and authenticate from the head alone (``request`` without its body). A
        ``CheckedHead``: go on, read the body and hand both to ``handle_checked``; otherwise the answer (401,
        404) to send without reading it, so an unauthenticated client never makes the gateway buffer a body."""
        ctx = self._context(request)
        response = await self._check_head(ctx)
        return CheckedHead(ctx) if response.status == HEAD_CHECKED else response

    async def handle_checked(self, checked: CheckedHead, body: bytes, size: int) -> GatewayResponse:
        """``handle`` for a head ``check_head`` let through, with its body: the rest of the pipeline on the same
        context (one request id; the head is not resolved and authenticated again). ``size``: the body bytes the
        client sent as far as they were read (``GatewayRequest.body_size``: more than ``len(body)`` when reading
        stopped at the limit)."""
        ctx = self._checked_context(checked)
        ctx.request = ctx.request.with_body(body, size)
        return await self._handle_context(ctx, self._after_head)

    async def handle(self, request: GatewayRequest) -> GatewayResponse:
        """Run ``request`` through the pipeline; never raises, every failure is an error response."""
        return await self._handle_context(self._context(request), self._handle)

    async def _handle_context(self, ctx: RequestContext, chain: Handler) -> GatewayResponse:
        response = await chain(ctx)
        if ctx.attempts:
            self._health_sync.maybe_sync()
        return response

    def refuse_checked(self, checked: CheckedHead, error: GatewayError) -> GatewayResponse:
        """``error`` as the pipeline would answer it, for a refusal the host adapter makes itself after
        ``check_head`` let the head through (413 on the announced length, 408 stalled body); recorded on the head's
        context, for its caller (no second key lookup)."""
        ctx = self._checked_context(checked)
        if self.usage is not None:
            self.usage.refused(ctx, error)
        status, body, extra = error_body(error, ctx.request_id)
        headers = [*_JSON, *((k.lower(), v) for k, v in extra.items()), ("x-request-id", ctx.request_id)]
        headers.append(("x-aigw-attempts", "0"))  # no backend was tried, as for any refusal before routing
        return GatewayResponse(status, headers, body)

    def client_left(self, checked: CheckedHead) -> None:
        """Record (499, client_disconnected) a client that left before its body was read in full."""
        ctx = self._checked_context(checked)
        if self.usage is not None:
            self.usage.left(ctx)

    def _checked_context(self, checked: CheckedHead) -> RequestContext:
        ctx = checked.take()
        # The record's time is when the pipeline goes on past the head, as for a request handled in one call.
        ctx.started_s = self.clock.now_s()
        return ctx

    async def flush_usage(self) -> None:
        """Hand the aggregated refusals of ended minutes to the usage sink and flush it (a host that may be
        frozen between requests calls this before its invocation ends)."""
        if self.usage is not None:
            self.usage.emit_closed()
            await self.usage.sink.flush()

    def _context(self, request: GatewayRequest) -> RequestContext:
        client_id = request.headers.get("x-request-id", "")
        request_id = client_id if _REQUEST_ID.match(client_id) else new_id()
        return RequestContext(request=request, request_id=request_id, started_s=self.clock.now_s())

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.routing.sync_interval_s)
            self._health_sync.maybe_sync()  # no-op while a sync runs; a store outage is logged by the sync
            if self.usage is not None:
                self.usage.emit_closed()  # a closed minute's refusals, even while no request arrives

    async def sync_health(self) -> None:
        """Publish this instance's health windows and adopt the others' (what the background sync does)."""
        await self._health_sync.sync()

    async def embed(self, deployment: str, text: str, caller: RequestContext) -> tuple[float, ...]:
        """An embedding of ``text`` from one of this gateway's own deployments (the semantic cache's input).

        It is the ``caller``'s call: counted and limited by the rules that match ``deployment`` for the caller's
        principal, headers and address. A refusal (``TokenLimitExceeded``) or a failure raises, before or after
        the backend; the caller decides what to do without the embedding.
        """
        body = {"input": text, "encoding_format": "float"}
        raw = orjson.dumps(body)
        # The caller's headers name its rate-limit keys (header:<name>) and region; its simulator controls
        # (x-aigw-sim-*) were meant for its own call, not this one.
        headers = {k: v for k, v in caller.request.headers.items() if not k.startswith("x-aigw-sim-")}
        path = f"/openai/deployments/{deployment}/embeddings"
        request = GatewayRequest("POST", path, {}, headers, raw, len(raw), caller.request.client_ip)
        ctx = RequestContext(request=request, request_id=caller.request_id, started_s=self.clock.now_s())
        ctx.endpoint = Endpoint(EndpointKind.INFERENCE, Surface.AZURE, "embeddings", deployment)
        ctx.principal = caller.principal or Principal(user="anonymous", tenant="default")
        ctx.deployment, ctx.body_json = deployment, body
        response = await self._internal(ctx)
        if response.status != 200:
            raise RuntimeError(f"embedding deployment {deployment!r} answered {response.status}")
        return tuple(orjson.loads(response.body)["data"][0]["embedding"])

    async def _dispatch(self, ctx: RequestContext) -> GatewayResponse:
        kind = ctx.require_endpoint().kind
        if kind is EndpointKind.INFERENCE:
            return await self._forward(ctx)
        if kind is EndpointKind.HEALTHZ:
            return GatewayResponse(200, list(_JSON), b'{"status":"ok"}')
        if kind is EndpointKind.STATUS:
            return GatewayResponse(200, list(_JSON), orjson.dumps(self.status(ctx.principal)))
        if kind in _USAGE_KINDS:
            store = self.usage_runtime.store if self.usage_runtime is not None else None
            return await usage_response(ctx, store, self.prices, utc_today(self.clock.now_s()))
        return GatewayResponse(200, list(_JSON), orjson.dumps(self._list_deployments(ctx.request.path, ctx.principal)))

    def status(self, principal: Principal | None) -> dict[str, object]:
        """For admin keys: backends, the deployments they serve and this instance's view of their health.
        For other keys only the deployments they may use: backend hosts and health are operators' business."""
        if principal is None or not principal.admin:
            return {
                "status": "ok",
                "deployments": self._deployments_for(principal),
                "any_deployment": self.pools.has_wildcard and principal is not None and principal.may_use("*"),
            }
        return {
            "status": "ok",
            "backends": [
                {
                    "name": b.name,
                    "type": b.type,
                    "region": b.region,
                    "priority": b.priority,
                    "weight": b.weight,
                    "deployments": self.pools.deployments_of(b),
                    "health": self.health.snapshot(b.name),
                }
                for b in self.config.backends
            ],
            "deployments": self.config.deployment_names(),
            "any_deployment": self.pools.has_wildcard,
        }

    def _deployments_for(self, principal: Principal | None) -> list[str]:
        names = self.config.deployment_names()
        if principal is None:
            return []
        return [n for n in names if principal.may_use(n)]

    def _list_deployments(self, path: str, principal: Principal | None) -> dict[str, object]:
        names = self._deployments_for(principal)
        data: list[dict[str, object]]
        if path.startswith("/openai/deployments"):
            # The shape of Azure OpenAI's (older) deployments list.
            data = [{"id": n, "model": n, "object": "deployment", "status": "succeeded"} for n in names]
        else:
            data = [{"id": n, "object": "model", "created": 0, "owned_by": "aigw"} for n in names]
        return {"object": "list", "data": data}


class CheckedHead:
    """A request head ``check_head`` let through: its context (endpoint named, caller authenticated), which
    ``handle_checked`` runs the rest of the pipeline on, once. Only ``check_head`` makes one, so the pipeline
    without its endpoint and auth steps is reached only by a context that went through them."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: RequestContext) -> None:
        self._ctx: RequestContext | None = ctx

    def take(self) -> RequestContext:
        """The context, once: a second run would record and count the request twice."""
        ctx, self._ctx = self._ctx, None
        if ctx is None:
            raise RuntimeError("a checked head is handled once")
        return ctx


async def _continue(ctx: RequestContext) -> GatewayResponse:
    return GatewayResponse(HEAD_CHECKED)


class _ResolveEndpoint:
    """Names the endpoint first, so that even a 404 for an unknown path gets the error format and headers."""

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse:
        ctx.endpoint = resolve(ctx.request.method, ctx.request.path)
        return await call_next(ctx)
