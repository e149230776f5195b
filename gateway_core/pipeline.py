"""The onion: policies wrap a terminal handler, each acting before and after ``call_next``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from .context import GatewayResponse, RequestContext

Handler = Callable[[RequestContext], Awaitable[GatewayResponse]]


class Policy(Protocol):
    async def __call__(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse:
        """Act on ``ctx``, usually call ``call_next(ctx)``, and return (possibly altering) its response."""
        ...


def build_chain(policies: Sequence[Policy], terminal: Handler) -> Handler:
    """Compose ``policies`` (outermost first) around ``terminal`` once, at start-up."""
    handler = terminal
    for policy in reversed(policies):
        handler = _bind(policy, handler)
    return handler


def _bind(policy: Policy, call_next: Handler) -> Handler:
    async def handler(ctx: RequestContext) -> GatewayResponse:
        return await policy(ctx, call_next)

    return handler
