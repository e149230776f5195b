"""Token limits: admit and reserve the estimate in every matching rule, settle with the actual usage after.

Admission adds the estimate to every matching rule's counter in one store round trip and takes them all back
(one more) if any new total is over its limit, so the tokens admitted never exceed a limit: concurrent requests
each see a total that includes everyone admitted before them. After the response the reservation is replaced by
the backend's reported usage (off the response path, in the background, coalesced with other requests' into
one round trip per short interval: see settlements.py); a backend error releases it, except the
estimate of each try that reached a backend and then timed out or was cut, which Azure may bill (so a failover
after such a try costs that estimate plus the usage of the answer that came). Budgets in money (``cost_quota_usd``)
count the same way in micro-dollars: the estimate's price, then the actual tokens' price (see budgets.py).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from ..background import BackgroundTasks
from ..clock import Clock
from ..config import LimitsSettings
from ..context import EndpointKind, GatewayResponse, RequestContext, UsageSource
from ..errors import GatewayError, ServiceUnavailable, TokenLimitExceeded
from ..limits.rules import Limit, LimitKind, applies, counter_value, limits_of
from ..limits.windows import MINUTE_S, minute_window, quota_period, sliding_used, tpm_retry_after_s
from ..pipeline import Handler
from ..providers.client import maybe_billed
from ..storage.ports import AdmissionAhead, CounterAdd, CounterStore, StorageError
from .budgets import (
    DeploymentPrices,
    Pricing,
    answer_micro_usd,
    billed_micro_usd,
    budget_refusal,
    estimate_micro_usd,
    remaining_header,
    stream_micro_usd,
    too_costly,
    unpriced,
)
from .settlements import Settlements

log = logging.getLogger("aigw")
_TPM_TTL_S = 3 * MINUTE_S  # the previous window is read for one more minute; keep a margin


@dataclass(slots=True)
class Reservation:
    limit: Limit
    store_key: str
    window: int
    ttl_s: int
    reserved: int  # tokens, or micro-dollars for a budget
    used: float  # tokens (micro-dollars) counted in the window, this reservation included
    reset_s: float  # seconds until the window is back to empty (headers)


@dataclass(slots=True)
class _Admission:
    limits: list[Limit]
    price: Pricing | None
    now: float
    adds: list[CounterAdd]
    ahead: AdmissionAhead


def _nothing() -> None:
    pass


class _Refused(Exception):
    def __init__(self, error: TokenLimitExceeded) -> None:
        self.error = error


class LimitsPolicy:
    def __init__(
        self,
        settings: LimitsSettings,
        store: CounterStore,
        clock: Clock,
        tasks: BackgroundTasks,
        prices: DeploymentPrices | None = None,
    ) -> None:
        """``prices``: each deployment's price, for budget rules (without it every budget refuses as unpriced)."""
        self._limits = limits_of(settings.rules)
        self._prices = prices
        self._settings = settings
        self._store = store
        self._clock = clock
        self._settlements = Settlements(store, tasks)  # coalesced: one round trip per flush, not per request
        self._warn_unpriced()
        self._previous: dict[str, int] = {}  # previous-minute totals by store key, for the current minute
        self._previous_window = -1

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse:
        endpoint = ctx.endpoint
        if endpoint is None or endpoint.kind is not EndpointKind.INFERENCE:
            return await call_next(ctx)
        admission = ctx.admission if isinstance(ctx.admission, _Admission) else self._admission(ctx)
        if admission is None:
            return await call_next(ctx)
        limits, price = admission.limits, admission.price
        try:
            reservations = await self._reserve(admission, ctx)
        except _Refused as refused:
            raise refused.error from None
        except StorageError as exc:
            admission.ahead.release()  # adds the cache made ahead, if any: this request is not counted by them
            if self._settings.on_store_error == "fail_closed":
                log.error("token limits unavailable, refusing request %s: %s", ctx.request_id, exc)
                raise ServiceUnavailable(
                    "Token limits cannot be checked right now (the limits store is unreachable); try again shortly.",
                    code="limits_store_unavailable",
                    headers={"retry-after": "5"},
                ) from None
            log.warning("token limits store unreachable, admitting request %s unchecked: %s", ctx.request_id, exc)
            return await self._unchecked(ctx, call_next, limits, price)
        try:
            response = await call_next(ctx)
        except BaseException as exc:
            charged = _maybe_billed(ctx)
            self._settle_later(reservations, charged, billed_micro_usd(price, ctx))
            if isinstance(exc, GatewayError):
                exc.headers["x-aigw-tokens-consumed"] = str(charged)  # e.g. a 502 after tries that were cut
            raise
        self._replace_ratelimit_headers(response, reservations)
        if response.stream is None:
            actual = self._actual(ctx, response) + _maybe_billed(ctx)
            response.headers.append(("x-aigw-tokens-consumed", str(actual)))
            self._settle_later(reservations, actual, answer_micro_usd(price, ctx, response.status))
        else:
            response.stream = self._settle_after_stream(ctx, response.stream, reservations, price)
        return response

    def admit_ahead(self, ctx: RequestContext) -> AdmissionAhead | None:
        """This request's counter adds, for the cache to make in its lookup's round trip (see AdmissionAhead);
        None if no rule applies or the request is refused before any store trip (this policy refuses it in
        its turn)."""
        endpoint = ctx.endpoint
        if endpoint is None or endpoint.kind is not EndpointKind.INFERENCE:
            return None
        try:
            admission = self._admission(ctx)
        except Exception:  # noqa: BLE001 - raised again, the same, when this policy's turn comes
            return None
        if admission is None:
            return None
        ctx.admission = admission
        return admission.ahead

    def _admission(self, ctx: RequestContext) -> _Admission | None:
        """What admitting this request adds to which counters; None if no rule applies. Raises the refusals
        that need no store (a request larger than a limit, an unpriced or too costly one for a budget)."""
        limits = [limit for limit in self._limits if applies(limit.rule, ctx)]
        if not limits:
            return None
        estimate = ctx.tokens.estimate
        price, cost = self._priced(ctx, limits)
        for limit in limits:
            if limit.kind is LimitKind.COST:
                if cost > limit.tokens:
                    raise too_costly(limit, cost, self._settings.quota_exceeded_status)
            elif estimate > limit.tokens:
                raise self._too_big(limit, estimate)
        now = self._clock.now_s()
        window, _ = minute_window(now)
        adds: list[CounterAdd] = []
        for limit in limits:
            value = counter_value(limit.rule, ctx)
            if limit.kind is LimitKind.TPM:
                adds.append(CounterAdd(f"tpm:{limit.rule.name}:{value}", window, estimate, _TPM_TTL_S))
            else:
                start, end = quota_period(now, limit.rule.quota_period or "daily")
                key = f"{limit.kind}:{limit.rule.name}:{value}"  # quota:... for tokens, cost:... for a budget
                amount = cost if limit.kind is LimitKind.COST else estimate
                adds.append(CounterAdd(key, start, amount, end - start + 3600))
        ahead = AdmissionAhead(adds, release=_nothing)
        admission = _Admission(limits, price, now, adds, ahead)
        ahead.release = functools.partial(self._take_back, admission)
        return admission

    def _take_back(self, admission: _Admission) -> None:
        """Undo the adds the cache made ahead for a request that will not be admitted here (in the background)."""
        totals, admission.ahead.totals = admission.ahead.totals, None
        if totals is not None:
            for add in admission.adds:
                self._settlements.add(add.key, add.window, -add.amount, add.ttl_s)

    def _priced(self, ctx: RequestContext, limits: list[Limit]) -> tuple[Pricing | None, int]:
        """The deployment's prices and the estimate's cost in micro-dollars at the dearest of them, if a budget
        applies (else None, 0)."""
        budget = next((limit for limit in limits if limit.kind is LimitKind.COST), None)
        if budget is None:
            return None, 0
        deployment = ctx.require_deployment()
        pricing = self._prices.pricing(deployment, ctx.tokens) if self._prices else None
        if pricing is None:
            model = self._prices.unpriced_model(deployment) if self._prices else None
            raise unpriced(budget, deployment, model or deployment)
        return pricing, estimate_micro_usd(pricing.dearest, ctx.tokens)

    def _warn_unpriced(self) -> None:
        # Named deployments are checked at config load; a rule for every deployment is checked per request.
        missing = self._prices.unpriced_deployments() if self._prices else []
        for limit in self._limits:
            if missing and limit.kind is LimitKind.COST and limit.rule.deployments is None:
                log.warning(
                    "budget rule '%s' covers deployments without a price, which its callers cannot use: %s "
                    "(add their models to usage.prices)",
                    limit.rule.name,
                    ", ".join(missing),
                )

    # -- admission

    async def _reserve(self, admission: _Admission, ctx: RequestContext) -> list[Reservation]:
        """Add the estimate (its cost in micro-dollars for a budget) to every limit's counter in one round trip
        (or take the totals of the adds the cache made ahead); if any total is then over its limit, take them
        all back (one more round trip) and refuse. Nothing is reserved if the store fails."""
        limits, adds, now = admission.limits, admission.adds, admission.now
        previous: list[int] = []
        for limit, add in zip(limits, adds, strict=True):
            before = self._previous_known(add.key, add.window) if limit.kind is LimitKind.TPM else 0
            previous.append(before if before is not None else await self._previous_read(add.key, add.window))
        totals, admission.ahead.totals = admission.ahead.totals, None  # consumed: released no more
        if totals is None:
            totals = await self._store.add_many(adds)
        reservations: list[Reservation] = []
        refusal: TokenLimitExceeded | None = None
        _, elapsed = minute_window(now)
        for limit, add, before, current in zip(limits, adds, previous, totals, strict=True):
            amount = add.amount
            if limit.kind is LimitKind.TPM:
                used = sliding_used(before, current, elapsed)
                if used > limit.tokens and refusal is None:
                    wait_s = tpm_retry_after_s(before, current - amount, elapsed, amount, limit.tokens)
                    refusal = self._tpm_refusal(limit, wait_s, used - amount)
                reset = (MINUTE_S - elapsed) + (MINUTE_S if current > 0 else 0)
                reservations.append(Reservation(limit, add.key, add.window, add.ttl_s, amount, used, reset))
            else:
                _, end = quota_period(now, limit.rule.quota_period or "daily")
                if current > limit.tokens and refusal is None:
                    if limit.kind is LimitKind.COST:
                        status = self._settings.quota_exceeded_status
                        refusal = budget_refusal(limit, current - amount, amount, now, end, status)
                    else:
                        refusal = self._quota_refusal(limit, end - now, current - amount)
                reservations.append(
                    Reservation(limit, add.key, add.window, add.ttl_s, amount, float(current), end - now)
                )
        if refusal is not None:
            await self._store.add_many([add._replace(amount=-add.amount) for add in adds])
            raise _Refused(refusal)
        return reservations

    # The previous minute is closed: read it once per minute per key, not once per request. Known totals are
    # taken without a coroutine (one per request and rule was a measurable share of the policy's time).
    def _previous_known(self, key: str, window: int) -> int | None:
        if window != self._previous_window:
            self._previous.clear()
            self._previous_window = window
        return self._previous.get(key)

    async def _previous_read(self, key: str, window: int) -> int:
        total = await self._store.get(key, window - MINUTE_S)
        if window == self._previous_window:  # not if the minute turned while the read was out
            self._previous[key] = total
        return total

    # -- refusals

    def _too_big(self, limit: Limit, estimate: int) -> TokenLimitExceeded:
        headers = {"x-should-retry": "false", **self._limit_headers(limit, 0.0, 0.0)}
        status = 429 if limit.kind is LimitKind.TPM else self._settings.quota_exceeded_status
        return TokenLimitExceeded(
            f"This request needs up to {estimate} tokens (prompt plus max completion), more than {limit.label} "
            "allows at all; shorten the prompt or lower max_tokens.",
            status=status,
            code="tokens_exceed_limit",
            rule=limit.rule.name,
            headers=headers,
        )

    def _tpm_refusal(self, limit: Limit, wait_s: float, used: float) -> TokenLimitExceeded:
        wait_s = max(wait_s, 0.001)
        headers = {
            "retry-after": str(max(1, math.ceil(wait_s))),
            "retry-after-ms": str(max(1, math.ceil(wait_s * 1000))),
            **self._limit_headers(limit, used, wait_s),
        }
        return TokenLimitExceeded(
            f"Token rate limit exceeded: {limit.label}. Retry after {math.ceil(wait_s)} seconds.",
            status=429,
            code="tokens_per_minute_exceeded",
            rule=limit.rule.name,
            headers=headers,
        )

    def _quota_refusal(self, limit: Limit, wait_s: float, used: float) -> TokenLimitExceeded:
        headers = {
            "retry-after": str(max(1, math.ceil(wait_s))),
            "x-should-retry": "false",
            "x-aigw-quota-remaining-tokens": str(max(0, int(limit.tokens - used))),
        }
        return TokenLimitExceeded(
            f"Token quota exhausted: {limit.label}. It renews in {math.ceil(wait_s)} seconds.",
            status=self._settings.quota_exceeded_status,
            code="quota_exceeded",
            rule=limit.rule.name,
            headers=headers,
        )

    @staticmethod
    def _limit_headers(limit: Limit, used: float, reset_s: float) -> dict[str, str]:
        if limit.kind is not LimitKind.TPM:
            return {"x-aigw-quota-remaining-tokens": str(max(0, int(limit.tokens - used)))}
        return {
            "x-ratelimit-limit-tokens": str(limit.tokens),
            "x-ratelimit-remaining-tokens": str(max(0, int(limit.tokens - used))),
            "x-ratelimit-reset-tokens": _duration(reset_s),
        }

    # -- after the response

    def _replace_ratelimit_headers(self, response: GatewayResponse, reservations: list[Reservation]) -> None:
        """Show the tightest rate and quota (least remaining), in place of the backend's own x-ratelimit-*."""
        headers = [(k, v) for k, v in response.headers if not k.startswith("x-ratelimit-")]
        tightest: dict[LimitKind, Reservation] = {}  # by kind, the first of the least remaining (as min() took)
        for reservation in reservations:
            kind = reservation.limit.kind
            tight = tightest.get(kind)
            if tight is None or reservation.limit.tokens - reservation.used < tight.limit.tokens - tight.used:
                tightest[kind] = reservation
        for kind in (LimitKind.TPM, LimitKind.QUOTA):
            tight = tightest.get(kind)
            if tight is not None:
                headers.extend(self._limit_headers(tight.limit, tight.used, tight.reset_s).items())
        tight = tightest.get(LimitKind.COST)
        if tight is not None:
            headers.extend(remaining_header(tight.limit, tight.used).items())
        response.headers = headers

    @staticmethod
    def _actual(ctx: RequestContext, response: GatewayResponse) -> int:
        # Backends do not charge refused requests; a success without usage keeps the estimate.
        if response.status >= 400:
            return 0
        total = ctx.tokens.actual_total
        return ctx.tokens.estimate if total is None else total

    def _settle_after_stream(
        self, ctx: RequestContext, stream: AsyncIterator[bytes], reservations: list[Reservation], price: Pricing | None
    ) -> AsyncIterator[bytes]:
        def settle(error: BaseException | None) -> None:
            self._settle_later(
                reservations, _stream_total(ctx, error) + _maybe_billed(ctx), stream_micro_usd(price, ctx, error)
            )

        return _then(stream, settle)

    def _settle_later(self, reservations: list[Reservation], actual: int, spent_micro_usd: int = 0) -> None:
        for reservation in reservations:
            spent = spent_micro_usd if reservation.limit.kind is LimitKind.COST else actual
            self._settlements.add(
                reservation.store_key, reservation.window, spent - reservation.reserved, reservation.ttl_s
            )

    async def _unchecked(
        self, ctx: RequestContext, call_next: Handler, limits: list[Limit], price: Pricing | None
    ) -> GatewayResponse:
        """fail_open: admit without reservations and add the actual usage after the response; if the store is
        still down then, that count is lost (logged by the background task), not retried."""

        def count(actual: int, spent_micro_usd: int) -> None:
            now = self._clock.now_s()
            for limit in limits:
                value = counter_value(limit.rule, ctx)
                amount = spent_micro_usd if limit.kind is LimitKind.COST else actual
                if limit.kind is LimitKind.TPM:
                    window, _ = minute_window(now)
                    key, ttl = f"tpm:{limit.rule.name}:{value}", _TPM_TTL_S
                else:
                    window, end = quota_period(now, limit.rule.quota_period or "daily")
                    key, ttl = f"{limit.kind}:{limit.rule.name}:{value}", end - window + 3600
                self._settlements.add(key, window, amount, ttl)

        try:
            response = await call_next(ctx)
        except BaseException:
            if _maybe_billed(ctx):
                count(_maybe_billed(ctx), billed_micro_usd(price, ctx))
            raise
        if response.stream is None:
            count(self._actual(ctx, response) + _maybe_billed(ctx), answer_micro_usd(price, ctx, response.status))
            return response
        response.stream = _then(
            response.stream,
            lambda error: count(_stream_total(ctx, error) + _maybe_billed(ctx), stream_micro_usd(price, ctx, error)),
        )
        return response


def _maybe_billed(ctx: RequestContext) -> int:
    """The estimate once for each try that reached a backend and then timed out or was cut (Azure may bill it)."""
    return ctx.tokens.estimate * sum(1 for attempt in ctx.attempts if attempt.maybe_billed)


def _stream_total(ctx: RequestContext, error: BaseException | None) -> int:
    """A stream's charge: its usage, or what passed if none came; but at least the estimate if the backend cut it
    (it may have generated, and bill, more than reached the gateway)."""
    total = ctx.tokens.actual_total
    if total is None:
        return ctx.tokens.estimate
    if error is not None and maybe_billed(error) and ctx.tokens.source is not UsageSource.BACKEND:
        return max(total, ctx.tokens.estimate)
    return total


async def _then(stream: AsyncIterator[bytes], on_end: Callable[[BaseException | None], None]) -> AsyncIterator[bytes]:
    """Relay ``stream``, then call ``on_end`` however it ended: done (None), failed (the error), or the client
    gone (None)."""
    error: BaseException | None = None
    try:
        async for chunk in stream:
            yield chunk
    except Exception as exc:
        error = exc
        raise
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()  # lets the usage scanner count what passed, if the stream was cut short
        on_end(error)


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``1m30s``, ``12s``, ``250ms``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"
