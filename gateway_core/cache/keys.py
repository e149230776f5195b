"""Cache keys, buckets and cacheability.

The key is the SHA-256 of a canonical JSON of everything that can change the answer: deployment, model,
api-version, operation, scope, and the whole request body minus an explicit list of fields known not to
change it. A field aigw has never heard of therefore changes the key instead of causing a wrong hit.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from ..config import CacheSettings
from ..context import RequestContext

# Fields that never change the answer (the stream is rebuilt from the stored JSON either way).
NEVER_IN_KEY = frozenset({"stream", "stream_options"})


def _digest(value: Any) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


def scope_value(settings: CacheSettings, ctx: RequestContext) -> str:
    principal = ctx.principal
    if settings.scope == "global" or principal is None:
        return "global"
    if settings.scope == "tenant":
        return f"tenant:{principal.tenant}"
    if settings.scope == "user":
        return f"user:{principal.tenant}/{principal.user}"
    return f"key:{principal.key_id}"


def keyed_body(settings: CacheSettings, body: dict[str, Any]) -> dict[str, Any]:
    excluded = NEVER_IN_KEY if settings.key_includes_user else NEVER_IN_KEY | {"user"}
    return {k: v for k, v in body.items() if k not in excluded}


def exact_key(settings: CacheSettings, ctx: RequestContext, model: str) -> tuple[str, str]:
    """(bucket, key) of the exact cache entry for ``ctx``."""
    endpoint, body = ctx.require_endpoint(), ctx.require_body()
    scope = scope_value(settings, ctx)
    bucket = _digest(["exact", ctx.deployment, scope])
    key = _digest(
        {
            "deployment": ctx.deployment,
            "model": model,
            "api_version": ctx.api_version or "",
            "operation": endpoint.operation,
            "scope": scope,
            "body": keyed_body(settings, body),
        }
    )
    return bucket, key


def semantic_bucket(
    settings: CacheSettings, ctx: RequestContext, model: str, vary: list[str], masked_body: dict[str, Any]
) -> str:
    """Prompts are compared only with prompts whose request is the same in everything but the embedded text.

    ``masked_body`` is the request body with the embedded text replaced by a marker (``cache.semantic``).
    """
    return _digest(
        [
            "semantic",
            ctx.deployment,
            model,
            ctx.api_version or "",
            ctx.require_endpoint().operation,
            scope_value(settings, ctx),
            keyed_body(settings, masked_body),
            vary,
        ]
    )


def request_is_cacheable(settings: CacheSettings, ctx: RequestContext) -> bool:
    """Deterministic in intent: embeddings always; otherwise temperature 0 or a fixed seed (unless configured)."""
    body = ctx.require_body()
    if ctx.require_endpoint().operation == "embeddings" or not settings.deterministic_only:
        return True
    temperature = body.get("temperature")
    seed = body.get("seed")
    return (isinstance(temperature, int | float) and temperature == 0) or (
        isinstance(seed, int) and not isinstance(seed, bool)
    )


def answer_is_cacheable(settings: CacheSettings, body: dict[str, Any]) -> bool:
    """A complete success: no choice cut by content filtering, nor by max_tokens unless configured."""
    choices = body.get("choices")
    if choices is not None and not isinstance(choices, list):
        return False
    for choice in choices or ():
        reason = choice.get("finish_reason") if isinstance(choice, dict) else None
        if reason == "content_filter" or reason is None:
            return False
        if reason == "length" and not settings.cache_truncated:
            return False
    return body.get("object") != "error"
