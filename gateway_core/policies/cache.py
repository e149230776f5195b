"""Response cache: answers identical deterministic requests from the store, safely scoped.

Before the call: decide whether this request may use the cache (config rules, client ``Cache-Control``,
determinism), look up the exact key (and, where on, the nearest earlier prompt), and let concurrent identical
misses wait for the first one (single flight, within this instance). A hit answers here: limits never see it,
so it costs no tokens. After the call: store complete, successful answers (streams once they ended with usage).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from ..background import BackgroundTasks
from ..cache.assemble import StreamAssembler
from ..cache.keys import answer_is_cacheable, exact_key, request_is_cacheable, semantic_bucket
from ..cache.recorded import RecordedStream
from ..cache.replay import replay_as_sse, replayable
from ..cache.semantic import embedded_prompt
from ..cache.vectors import normalise
from ..catalogue import PoolTable
from ..clock import Clock
from ..config import CacheSettings
from ..context import CacheStatus, EndpointKind, GatewayResponse, RequestContext, UsageSource
from ..errors import BadRequest
from ..pipeline import Handler
from ..storage.ports import AdmissionAhead, CacheEntry, CacheStore, LookupThenAdd, StorageError

log = logging.getLogger("aigw")
_DIGITS = re.compile(r"[0-9]{1,12}")
# (embedding deployment, text, the caller's context, charged for the call) -> vector
Embedder = Callable[[str, str, RequestContext], Awaitable[tuple[float, ...]]]


@dataclass(slots=True)
class _Plan:
    bucket: str
    key: str
    ttl_s: int
    lookup: bool  # False for Cache-Control: no-cache (refresh)
    semantic_bucket: str | None = None
    vector: tuple[float, ...] | None = None


@dataclass(slots=True)
class _Flight:
    future: asyncio.Future[CacheEntry | None]
    started_s: float


class CachePolicy:
    def __init__(
        self,
        settings: CacheSettings,
        store: CacheStore,
        pools: PoolTable,
        clock: Clock,
        tasks: BackgroundTasks,
        embed: Embedder | None = None,
        max_in_flight: int = 10_000,
        admit_ahead: Callable[[RequestContext], AdmissionAhead | None] | None = None,
        lookup_then_add: LookupThenAdd | None = None,
    ) -> None:
        """``admit_ahead`` (the limits policy's) and ``lookup_then_add`` (where one thread serves the cache and
        counters stores): a miss's lookup makes the limits' admission in the same round trip."""
        self._settings = settings
        self._store = store
        self._pools = pools
        self._clock = clock
        self._tasks = tasks
        self._embed = embed
        self._semantic = settings.semantic
        if self._semantic is not None and embed is None:
            raise ValueError("semantic caching needs an embedder")
        self._inflight: dict[str, _Flight] = {}
        self._max_in_flight = max_in_flight
        self._admit_ahead = admit_ahead if lookup_then_add is not None else None
        self._lookup_then_add = lookup_then_add

    @property
    def in_flight(self) -> int:
        """Misses currently leading a single flight in this instance."""
        return len(self._inflight)

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse:
        endpoint = ctx.endpoint
        if endpoint is None or endpoint.kind is not EndpointKind.INFERENCE or ctx.body_json is None:
            return await call_next(ctx)
        enabled, ttl_s = self._rule_for(ctx)
        if not enabled:
            return await call_next(ctx)
        plan = self._plan(ctx, ttl_s)
        if plan is None:
            ctx.cache_status = CacheStatus.BYPASS
            return _tag(await call_next(ctx), ctx)
        if plan.lookup:
            ahead = self._ahead(ctx)
            hit = await self._lookup(ctx, plan, ahead)
            if hit is not None:
                return hit  # a hit made no adds
            leader = self._leader(plan.key)
            if leader is not None:
                try:
                    shared = await self._wait_for(leader)
                    answered = self._answer(ctx, shared, CacheStatus.HIT) if shared is not None else None
                except BaseException:
                    if ahead is not None:
                        ahead.release()
                    raise
                if answered is not None:
                    if ahead is not None:
                        ahead.release()  # answered here: the limits policy will not see this request
                    return answered
        if plan.key in self._inflight or len(self._inflight) >= self._max_in_flight:
            # A refresh while another miss is in flight, or too many in flight: go alone, do not lead.
            ctx.cache_status = CacheStatus.MISS
            return _tag(await call_next(ctx), ctx)
        future: asyncio.Future[CacheEntry | None] = asyncio.get_running_loop().create_future()
        self._inflight[plan.key] = _Flight(future, self._clock.monotonic_s())
        ctx.cache_status = CacheStatus.MISS
        handed_to_stream = False
        try:  # whatever happens from here on, the waiters are released (by this finally or by the stream)
            response = _tag(await call_next(ctx), ctx)
            if response.status == 200 and response.stream is None:
                self._store_later(ctx, plan, future, response.body)
            elif response.status == 200 and response.stream is not None:
                response.stream = RecordedStream(
                    response.stream,
                    lambda assembler, complete: self._stream_ended(ctx, plan, future, assembler, complete),
                )
                handed_to_stream = True
            return response
        finally:
            if not handed_to_stream:
                self._finish(plan.key, future, None)  # no-op once _store_later answered the waiters

    # -- deciding

    def _rule_for(self, ctx: RequestContext) -> tuple[bool, int]:
        enabled, ttl_s = self._settings.enabled, self._settings.ttl_s
        tenant = ctx.principal.tenant if ctx.principal else None
        for rule in self._settings.rules:
            if rule.deployments is not None and ctx.deployment not in rule.deployments:
                continue
            if rule.tenants is not None and tenant not in rule.tenants:
                continue
            enabled = rule.enabled
            ttl_s = rule.ttl_s or ttl_s
        return enabled, ttl_s

    def _plan(self, ctx: RequestContext, ttl_s: int) -> _Plan | None:
        requested = self._requested_ttl(ctx)  # checked first: a bad header is a 400 whether or not it would matter
        directives = {d.strip().lower() for d in ctx.request.headers.get("cache-control", "").split(",")}
        if "no-store" in directives or not request_is_cacheable(self._settings, ctx) or requested == 0:
            return None
        if requested is not None:
            ttl_s = requested
        bucket, key = exact_key(self._settings, ctx, self._model_of(ctx.require_deployment()))
        return _Plan(bucket, key, ttl_s, lookup="no-cache" not in directives)

    def _requested_ttl(self, ctx: RequestContext) -> int | None:
        """``x-aigw-cache-ttl``: ASCII digits only (``str.isdigit`` also takes '٣' and '²'), at most max_ttl_s."""
        value = ctx.request.headers.get("x-aigw-cache-ttl")
        if value is None:
            return None
        max_ttl_s = self._settings.max_ttl_s
        if _DIGITS.fullmatch(value) is None or int(value) > max_ttl_s:
            raise BadRequest(
                f"x-aigw-cache-ttl must be a whole number of seconds from 0 to {max_ttl_s}", param="x-aigw-cache-ttl"
            )
        return int(value)

    def _model_of(self, deployment: str) -> str:
        ref = self._pools.deployment_ref(deployment)
        return (ref.model or ref.name) if ref is not None else deployment

    # -- looking up

    def _ahead(self, ctx: RequestContext) -> AdmissionAhead | None:
        """The limits' admission to make in the lookup's round trip; never where a semantic lookup may follow
        the exact one (a semantic hit must not have admitted anything)."""
        if self._admit_ahead is None:
            return None
        if self._semantic is not None and ctx.deployment in self._semantic.deployments:
            return None
        return self._admit_ahead(ctx)

    async def _lookup(self, ctx: RequestContext, plan: _Plan, ahead: AdmissionAhead | None) -> GatewayResponse | None:
        now = self._clock.now_s()
        try:
            if ahead is not None and self._lookup_then_add is not None:
                entry, ahead.totals = await self._lookup_then_add(plan.bucket, plan.key, now, ahead.adds)
            else:
                entry = await self._store.get(plan.bucket, plan.key, now)
            if entry is not None:
                return self._answer(ctx, entry, CacheStatus.HIT)
            if self._semantic is not None and ctx.deployment in self._semantic.deployments:
                return await self._semantic_lookup(ctx, plan, now)
        except StorageError as exc:
            log.warning("cache lookup failed, treating as a miss: %s", exc)
        return None

    async def _semantic_lookup(self, ctx: RequestContext, plan: _Plan, now: float) -> GatewayResponse | None:
        semantic, embed = self._semantic, self._embed
        if semantic is None or embed is None:  # never: both are set together (checked in __init__)
            return None
        text, masked = embedded_prompt(
            ctx.body_json or {}, semantic.max_message_count, semantic.include_system_messages
        )
        if not text:
            return None
        vary = [ctx.request.headers.get(h.lower(), "") for h in semantic.vary_by_headers]
        model = self._model_of(ctx.require_deployment())
        plan.semantic_bucket = semantic_bucket(self._settings, ctx, model, vary, masked)
        try:
            plan.vector = normalise(await embed(semantic.embedding_deployment, text, ctx))
        except Exception as exc:  # noqa: BLE001 - a failed embedding must not fail the request
            log.warning("semantic cache: embedding failed, skipping lookup: %s", exc)
            return None
        found = await self._store.nearest(plan.semantic_bucket, plan.vector, now)
        if found is None or found[1] < semantic.similarity_threshold:
            return None
        ctx.cache_score = found[1]
        return self._answer(ctx, found[0], CacheStatus.SEMANTIC_HIT)

    async def _wait_for(self, leader: asyncio.Future[CacheEntry | None]) -> CacheEntry | None:
        try:
            return await asyncio.wait_for(asyncio.shield(leader), self._settings.single_flight_wait_s)
        except TimeoutError:
            return None

    def _answer(self, ctx: RequestContext, entry: CacheEntry, status: CacheStatus) -> GatewayResponse | None:
        """The cached answer in the shape the client asked for; None if a stream would lose some of its fields."""
        answer: Any = orjson.loads(entry.body) if ctx.stream else {}
        if not isinstance(answer, dict) or not replayable(answer):
            ctx.cache_score = None
            return None
        ctx.cache_status = status
        ctx.tokens.prompt, ctx.tokens.completion, ctx.tokens.source = (
            entry.prompt_tokens,
            entry.completion_tokens,
            UsageSource.CACHE,
        )
        age = str(max(0, math.floor(self._clock.now_s() - entry.created_s)))
        if ctx.stream:
            # As the client asked: the tokens policy may have added include_usage for its own count.
            options = (ctx.body_json or {}).get("stream_options")
            asked = isinstance(options, dict) and options.get("include_usage") is True
            include_usage = asked and not ctx.tokens.usage_injected
            headers = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
            response = GatewayResponse(200, headers, stream=replay_as_sse(answer, include_usage))
        else:
            response = GatewayResponse(200, [("content-type", "application/json")], entry.body)
        response.headers.append(("age", age))
        if ctx.cache_score is not None:
            response.headers.append(("x-aigw-cache-score", f"{ctx.cache_score:.4f}"))
        return _tag(response, ctx)

    # -- storing

    def _entries(self, ctx: RequestContext, plan: _Plan, body: bytes) -> list[CacheEntry]:
        now = self._clock.now_s()
        prompt, completion = ctx.tokens.prompt or 0, ctx.tokens.completion or 0
        entries = [CacheEntry(plan.key, plan.bucket, body, now, now + plan.ttl_s, prompt, completion)]
        if plan.semantic_bucket is not None and plan.vector is not None:
            entries.append(
                CacheEntry(plan.key, plan.semantic_bucket, body, now, now + plan.ttl_s, prompt, completion, plan.vector)
            )
        return entries

    def _store_later(
        self, ctx: RequestContext, plan: _Plan, future: asyncio.Future[CacheEntry | None], body: bytes
    ) -> None:
        """Answer the waiters with ``body`` if it is cacheable, then store it in the background; never raises."""
        entries: list[CacheEntry] = []
        try:
            entries = self._cacheable(ctx, plan, body)
        except Exception:
            log.exception("cache: not storing an answer it could not read")
        finally:
            self._finish(plan.key, future, entries[0] if entries else None)
        if entries:
            self._tasks.spawn(self._put(entries), "cache store")

    def _cacheable(self, ctx: RequestContext, plan: _Plan, body: bytes) -> list[CacheEntry]:
        if len(body) > self._settings.max_entry_bytes:
            return []
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            return []
        if not isinstance(answer, dict) or not answer_is_cacheable(self._settings, answer):
            return []
        return self._entries(ctx, plan, body)

    async def _put(self, entries: list[CacheEntry]) -> None:
        try:
            for entry in entries:
                await self._store.put(entry)
        except StorageError as exc:
            log.warning("cache store failed: %s", exc)

    def _stream_ended(
        self,
        ctx: RequestContext,
        plan: _Plan,
        future: asyncio.Future[CacheEntry | None],
        assembler: StreamAssembler,
        complete: bool,
    ) -> None:
        """The end of a streamed miss, however it ended: store it if it completed with usage; never raises."""
        answer = None
        if complete and ctx.tokens.source is UsageSource.BACKEND:
            usage = {
                "prompt_tokens": ctx.tokens.prompt or 0,
                "completion_tokens": ctx.tokens.completion or 0,
                "total_tokens": ctx.tokens.actual_total or 0,
            }
            try:
                answer = assembler.answer(usage)
            except Exception:
                log.exception("cache: not storing a stream it could not assemble")
        if answer is None:
            self._finish(plan.key, future, None)
        else:
            self._store_later(ctx, plan, future, orjson.dumps(answer))

    def _leader(self, key: str) -> asyncio.Future[CacheEntry | None] | None:
        """The miss in flight for ``key``; one older than the waiters' patience is dropped, not waited for."""
        flight = self._inflight.get(key)
        if flight is None:
            return None
        if self._clock.monotonic_s() - flight.started_s > self._settings.single_flight_wait_s:
            self._finish(key, flight.future, None)  # its stream was never read nor closed: do not wedge the key
            return None
        return flight.future

    def _finish(self, key: str, future: asyncio.Future[CacheEntry | None], entry: CacheEntry | None) -> None:
        flight = self._inflight.get(key)
        if flight is not None and flight.future is future:
            del self._inflight[key]
        if not future.done():
            future.set_result(entry)


def _tag(response: GatewayResponse, ctx: RequestContext) -> GatewayResponse:
    response.headers.append(("x-aigw-cache", ctx.cache_status))
    return response
