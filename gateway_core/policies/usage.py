"""Usage recording: one ``UsageRecord`` per request, handed to the usage sink when the request is over.

It sits just inside the errors policy and outside endpoint resolution (slot 2), so it sees every way a request
ends: an answer, a refusal at any later step (raised, so its status and code are read from the exception and it
is re-raised for the errors policy to answer), a 404 for a path aigw does not serve, or the client leaving
(cancelled: status 499). A stream is recorded when it ends, however it ends, exactly once.

Refusals with no principal (401s, 404s before authentication) are not recorded one by one: they go to the
``RefusalAggregator`` (one row per address, code and minute). ``/healthz`` is not recorded.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable

from ..catalogue import PoolTable
from ..clock import Clock
from ..config import GatewayConfig
from ..context import HEAD_CHECKED, GatewayResponse, RequestContext, UsageSource
from ..errors import TokenLimitExceeded, error_payload
from ..ids import new_id
from ..names import is_deployment_name
from ..pipeline import Handler
from ..usage.costs import Costs
from ..usage.prices import PriceTable
from ..usage.record import UsageRecord
from ..usage.refusals import RefusalAggregator
from ..usage.sink import UsageSink

log = logging.getLogger("aigw")
CLIENT_CLOSED = 499  # the client left before the response head (nginx's code; no client ever sees it)
_CLIENT_GONE = "client_disconnected"
_PATH_MAX = 512  # a record keeps at most this much of the path
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # decoded from %XX in a client's path; kept escaped, not raw


class UsageRecorder:
    """Builds the records from finished requests' contexts; shared by the pipelines' usage policies."""

    def __init__(
        self, config: GatewayConfig, pools: PoolTable, prices: PriceTable, sink: UsageSink, clock: Clock
    ) -> None:
        self.sink = sink
        self.costs = Costs(prices)
        self.refusals = RefusalAggregator(sink)
        self._pools = pools
        self._clock = clock
        self._regions = {backend.name: backend.region for backend in config.backends}

    def policy(self, *, internal: bool = False) -> UsagePolicy:
        """The policy for a pipeline; ``internal``: the gateway's own calls for a caller (semantic cache)."""
        return UsagePolicy(self, internal)

    def emit_closed(self) -> None:
        """Hand the aggregated refusals of minutes that have ended to the sink."""
        self.refusals.emit_closed(self._clock.now_s())

    async def close(self) -> None:
        self.refusals.emit_all()
        await self.sink.close()

    def finish(self, ctx: RequestContext, end: _End) -> None:
        """Record ``ctx``'s request, which ended as ``end`` says; never raises into the request."""
        try:
            if ctx.principal is None:
                self.refusals.add(ctx.started_s, ctx.request.client_ip, end.status, end.error_code or "")
                return
            self.emit_closed()
            self.sink.record(self.build(ctx, end))
        except Exception:
            log.exception("usage: request %s could not be recorded", ctx.request_id)

    def left(self, ctx: RequestContext) -> None:
        """Record a client that left before the pipeline ran (the host adapter saw it go mid-body): 499."""
        now = self.now_s()
        self.finish(ctx, _End(CLIENT_CLOSED, now, now, internal=False, error=_ClientGone()))

    def refused(self, ctx: RequestContext, error: BaseException) -> None:
        """Record a refusal made outside the pipeline (the host adapter's 413 on the head, 408 stalled body)."""
        now = self.now_s()
        self.finish(ctx, _End(error_payload(error, "")[0], now, now, internal=False, error=error))

    def build(self, ctx: RequestContext, end: _End) -> UsageRecord:
        principal = ctx.require_principal()
        deployment = self._known(ctx.deployment or (ctx.endpoint.deployment if ctx.endpoint is not None else None))
        model = self._pools.model_of(deployment, ctx.backend) if deployment else None  # from config, not the client
        tokens = ctx.tokens
        prompt, completion = tokens.prompt or 0, tokens.completion or 0
        saved_tokens, saved_cost = 0, None
        if tokens.source is UsageSource.CACHE:
            # A cached answer: the backend was not called, so nothing is billed; what it would have cost is saved.
            saved_tokens, saved_cost = prompt + completion, self.costs.micro_usd(model, prompt, completion)
            prompt = completion = 0
        cached = min(tokens.cached_prompt, prompt)
        return UsageRecord(
            record_id=new_id(),
            time_s=ctx.started_s,
            request_id=ctx.request_id,
            tenant=principal.tenant,
            user=principal.user,
            key_id=principal.key_id,
            method=ctx.request.method,
            path=_recorded_path(ctx.request.path),
            status=end.status,
            deployment=deployment,
            model=model,
            backend=ctx.backend,
            region=self._regions.get(ctx.backend) if ctx.backend else None,
            stream=ctx.stream,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_prompt_tokens=cached,
            reasoning_tokens=min(tokens.reasoning, completion),
            token_source=str(tokens.source),
            cost_micro_usd=self.costs.micro_usd(model, prompt, completion, cached),
            cache=str(ctx.cache_status),
            saved_tokens=saved_tokens,
            saved_micro_usd=saved_cost if saved_tokens else None,
            attempts=len(ctx.attempts),
            ttfb_ms=end.ttfb_ms,
            latency_ms=end.latency_ms,
            limit_rule=end.limit_rule,
            error_code=end.error_code,
            internal=end.internal,
            # Tries cut or timed out after they reached a backend: Azure may bill them (the limits policy
            # charges the same estimate); not in the tokens above or the cost, which are the answer's.
            maybe_billed_tokens=tokens.estimate * sum(1 for attempt in ctx.attempts if attempt.maybe_billed),
        )

    def now_s(self) -> float:
        return self._clock.monotonic_s()

    def _known(self, deployment: str | None) -> str | None:
        """``deployment`` if it is a valid name the gateway serves, else None: a client's invalid or unknown name
        (control characters, 8 KB, a new summary row per name) never reaches the records; the error code says
        why it was refused."""
        if deployment is None or not is_deployment_name(deployment) or not self._pools.serves(deployment):
            return None
        return deployment


def _recorded_path(path: str) -> str:
    # Control characters are not printable: most paths skip the regex.
    return (path if path.isprintable() else _CONTROL.sub(lambda m: f"%{ord(m.group()):02X}", path))[:_PATH_MAX]


class _End:
    """How a request ended, as the record tells it."""

    __slots__ = ("error_code", "internal", "latency_ms", "limit_rule", "status", "ttfb_ms")

    def __init__(
        self,
        status: int,
        started_s: float,
        now_s: float,
        *,
        internal: bool,
        error: BaseException | None = None,
        first_byte_s: float | None = None,
    ) -> None:
        self.status = status
        self.internal = internal
        self.latency_ms = round((now_s - started_s) * 1000, 3)
        self.ttfb_ms = None if first_byte_s is None else round((first_byte_s - started_s) * 1000, 3)
        self.error_code: str | None = None
        self.limit_rule = error.rule if isinstance(error, TokenLimitExceeded) else None
        if isinstance(error, asyncio.CancelledError | _ClientGone):
            self.error_code = _CLIENT_GONE
        elif error is not None:
            _, body, _ = error_payload(error, "")
            self.error_code = body["error"]["code"]


class _ClientGone(Exception):
    """A stream closed by its reader before its end."""


class UsagePolicy:
    def __init__(self, recorder: UsageRecorder, internal: bool) -> None:
        self._recorder = recorder
        self._internal = internal

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse:
        recorder = self._recorder
        started = recorder.now_s()
        try:
            response = await call_next(ctx)
        except BaseException as exc:
            status = CLIENT_CLOSED if isinstance(exc, asyncio.CancelledError) else error_payload(exc, "")[0]
            recorder.finish(ctx, _End(status, started, recorder.now_s(), internal=self._internal, error=exc))
            raise
        if response.status == HEAD_CHECKED or (ctx.endpoint is not None and ctx.endpoint.public):
            return response
        if response.stream is None:
            now = recorder.now_s()
            recorder.finish(ctx, _End(response.status, started, now, internal=self._internal, first_byte_s=now))
            return response

        def ended(error: BaseException | None, first_byte_s: float | None) -> None:
            end = _End(
                response.status,
                started,
                recorder.now_s(),
                internal=self._internal,
                error=error,
                first_byte_s=first_byte_s,
            )
            recorder.finish(ctx, end)

        response.stream = _RecordedStream(response.stream, ended, recorder.now_s)
        return response


class _RecordedStream:
    """Relays a stream and calls ``on_end`` once when it ends: done, failed, cancelled or closed by its reader
    before its end (the client left). An iterator class rather than a generator: closing a generator that never
    started runs none of its code, and that request would go unrecorded."""

    def __init__(
        self,
        stream: AsyncIterator[bytes],
        on_end: Callable[[BaseException | None, float | None], None],
        now_s: Callable[[], float],
    ) -> None:
        self._stream = stream
        self._on_end = on_end
        self._now_s = now_s
        self._first_byte_s: float | None = None
        self._ended = False

    def __aiter__(self) -> _RecordedStream:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._stream.__anext__()
        except StopAsyncIteration:
            self._end(None)
            raise
        except BaseException as exc:
            self._end(exc)
            raise
        if self._first_byte_s is None:
            self._first_byte_s = self._now_s()
        return chunk

    async def aclose(self) -> None:
        try:
            aclose = getattr(self._stream, "aclose", None)
            if aclose is not None:
                await aclose()  # first, so the usage scanner counts what passed before the record is made
        finally:
            self._end(_ClientGone())

    def _end(self, error: BaseException | None) -> None:
        if not self._ended:
            self._ended = True
            self._on_end(error, self._first_byte_s)
