"""How one call looks on each backend's wire: the URL and, where needed, the body."""

from __future__ import annotations

import orjson

from ..context import RequestContext
from ..routing.pools import Target


def upstream_url(target: Target, ctx: RequestContext, operation: str) -> str:
    backend = target.backend
    if backend.type == "azure":
        api_version = ctx.api_version or backend.api_version
        return f"{backend.url}/openai/deployments/{target.upstream_name}/{operation}?api-version={api_version}"
    return f"{backend.url}/v1/{operation}"


def upstream_body(target: Target, ctx: RequestContext) -> bytes:
    """The client's bytes unchanged, unless a policy changed the body or an OpenAI-format backend knows the
    model by another name."""
    body = ctx.body_json
    if body is None:
        return ctx.request.body
    if target.backend.type == "openai" and body.get("model") != target.upstream_name:
        return orjson.dumps({**body, "model": target.upstream_name})
    if ctx.body_modified:
        return orjson.dumps(body)
    return ctx.request.body
