"""How one call looks on each backend's wire: the URL and, where needed, the body."""

from __future__ import annotations

from urllib.parse import quote, urlencode

import orjson

from ..catalogue import Target
from ..context import RequestContext
from ..names import is_api_version, is_deployment_name

# Azure OpenAI answers 400 to stream_options on api-versions before this one (as in policies/tokens.py).
_STREAM_OPTIONS_SINCE = "2024-09-01"


def upstream_url(target: Target, ctx: RequestContext, operation: str) -> str:
    """The backend's URL for ``operation``, built from checked parts only: the deployment name and
    api-version passed the validate policy or config validation. Checking again costs two regex matches and
    keeps a future caller that skipped those checks from writing a client's string into a URL."""
    backend = target.backend
    if backend.type == "azure":
        name = target.upstream_name
        api_version = ctx.api_version or backend.api_version
        if not (is_deployment_name(name) and is_api_version(api_version)):
            # A bug, not a client error: every path in must have checked these (answers a 500, sends nothing).
            raise ValueError(f"unchecked deployment name or api-version for an upstream URL: {name!r}")
        query = urlencode({"api-version": api_version})
        return f"{backend.url}/openai/deployments/{quote(name, safe='')}/{operation}?{query}"
    return f"{backend.url}/v1/{operation}"


def upstream_body(target: Target, ctx: RequestContext) -> bytes:
    """The client's bytes unchanged, unless a policy changed the body or an OpenAI-format backend knows the
    model by another name."""
    body = ctx.body_json
    if body is None:
        return ctx.request.body
    if target.backend.type == "openai" and body.get("model") != target.upstream_name:
        return orjson.dumps({**body, "model": target.upstream_name})
    if ctx.tokens.usage_injected and _predates_stream_options(target, ctx):
        # On /v1 the api-version is the backend's, known only now: send the client's own bytes (the only change
        # to the body was the injected stream_options); the stream is then counted from its text.
        return ctx.request.body
    if ctx.body_modified:
        return orjson.dumps(body)
    return ctx.request.body


def _predates_stream_options(target: Target, ctx: RequestContext) -> bool:
    backend = target.backend
    return backend.type == "azure" and (ctx.api_version or backend.api_version) < _STREAM_OPTIONS_SINCE
