"""Innermost policy: the tokens a backend's final answer actually cost, read into ``ctx.tokens``.

It wraps the failover loop, so it sees only the answer the client gets (never a failed try): a JSON answer's
``usage`` is read at once, a stream's as it passes through (counted from its text if it ends without usage).
The limits and cache policies, outside it, settle and store with these actuals.
"""

from __future__ import annotations

from ..context import GatewayResponse, RequestContext
from ..pipeline import Handler
from ..tokens.usage import record_json_usage, scan_sse


class AccountingPolicy:
    async def __call__(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse:
        response = await call_next(ctx)
        if response.status == 200:
            if response.stream is not None:
                response.stream = scan_sse(response.stream, ctx.tokens)
            else:
                record_json_usage(response.body, ctx.tokens)
        return response
