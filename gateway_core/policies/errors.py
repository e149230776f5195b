"""Outermost policy: every failure becomes an OpenAI-style error, and every response gets aigw's headers."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator

import orjson

from ..context import EndpointKind, GatewayResponse, RequestContext
from ..errors import GatewayError, PipelineOrderError, error_payload, sse_error_event
from ..pipeline import Handler

log = logging.getLogger("aigw")


class ErrorsPolicy:
    async def __call__(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse:
        try:
            response = await call_next(ctx)
        except Exception as exc:  # noqa: BLE001 - this is the one place every error is turned into a response
            response = self._to_response(ctx, exc)
        else:
            if response.stream is not None:
                response.stream = _Closing(self._guard_stream(ctx, response.stream), response.stream)
        response.headers.append(("x-request-id", ctx.request_id))
        if ctx.backend is not None:
            response.headers.append(("x-aigw-backend", ctx.backend))
        if ctx.endpoint is None or ctx.endpoint.kind is EndpointKind.INFERENCE:
            # Every answer to an inference path says how many backend tries it cost: 0 for a refusal or a hit.
            response.headers.append(("x-aigw-attempts", str(len(ctx.attempts))))
        return response

    def _to_response(self, ctx: RequestContext, exc: Exception) -> GatewayResponse:
        if isinstance(exc, GatewayError) and not isinstance(exc, PipelineOrderError):
            log.info("request %s refused: %s %s", ctx.request_id, exc.status, exc.message)
        else:
            log.exception("request %s failed", ctx.request_id)
        status, body, extra = error_payload(exc, ctx.request_id)
        headers = [("content-type", "application/json")]
        headers.extend((k.lower(), v) for k, v in extra.items())
        return GatewayResponse(status, headers, orjson.dumps(body))

    async def _guard_stream(self, ctx: RequestContext, stream: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
        # Once the status line is out the only way to report a failure is a final SSE error event.
        try:
            async for chunk in stream:
                yield chunk
        except Exception as exc:
            if not isinstance(exc, GatewayError):
                log.exception("request %s failed mid-stream", ctx.request_id)
            yield sse_error_event(exc, ctx.request_id)
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()


class _Closing:
    """``guard`` relaying ``inner``; closing it closes ``inner`` too, even if it was never iterated (closing a
    generator that never started runs none of its code: the upstream stream would stay open, unrecorded)."""

    def __init__(self, guard: AsyncGenerator[bytes, None], inner: AsyncIterator[bytes]) -> None:
        self._guard = guard
        self._inner = inner

    def __aiter__(self) -> _Closing:
        return self

    async def __anext__(self) -> bytes:
        return await self._guard.__anext__()

    async def aclose(self) -> None:
        try:
            await self._guard.aclose()
        finally:
            aclose = getattr(self._inner, "aclose", None)
            if aclose is not None:
                await aclose()  # a no-op if the guard closed it already
