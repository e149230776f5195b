"""The onion: policies wrap a terminal handler, each acting before and after ``call_next``."""

from __future__ import annotations

import functools
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
    # A partial, not a wrapping ``async def``: calling it returns the policy's own coroutine, so a request makes
    # one coroutine per policy instead of two (the wrappers were 75,000 calls per 3,000 requests, cProfile).
    return functools.partial(policy, call_next=call_next)
