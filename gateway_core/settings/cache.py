"""The cache section: the exact cache, its per-deployment rules, and the opt-in semantic cache."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .base import Section, check_deployment_name


class CacheRule(Section):
    """Turns caching on or off, or sets the TTL, for some deployments and/or tenants; the last match wins."""

    deployments: tuple[str, ...] | None = None
    tenants: tuple[str, ...] | None = None
    enabled: bool = True
    ttl_s: int | None = Field(default=None, ge=1)


class SemanticCacheSettings(Section):
    """Semantic caching, opt-in per deployment: the nearest earlier prompt above a similarity threshold."""

    deployments: tuple[str, ...] = Field(min_length=1)
    embedding_deployment: str  # a gateway deployment that serves embeddings
    similarity_threshold: float = Field(default=0.95, gt=0.0, le=1.0)
    max_message_count: int = Field(default=1, ge=1)  # 1: the last user message only
    include_system_messages: bool = False
    vary_by_headers: tuple[str, ...] = ()  # request headers whose values must match too

    @field_validator("embedding_deployment")
    @classmethod
    def _embedding_deployment(cls, value: str) -> str:
        return check_deployment_name(value)


class CacheSettings(Section):
    enabled: bool = False
    scope: Literal["global", "tenant", "user", "key"] = "tenant"
    ttl_s: int = Field(default=3600, ge=1)
    max_ttl_s: int = Field(default=7 * 86400, ge=1)  # the most a client may ask for with x-aigw-cache-ttl
    max_entry_bytes: int = Field(default=1024 * 1024, ge=1)
    max_store_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)  # SQLite eviction budget (LRU)
    deterministic_only: bool = True  # cache only temperature 0 or a fixed seed (embeddings always)
    cache_truncated: bool = False  # also cache answers that stopped at max_tokens (finish_reason "length")
    key_includes_user: bool = False  # the request's "user" field changes the key
    single_flight_wait_s: float = Field(default=120.0, gt=0)  # how long identical misses wait for the first
    rules: tuple[CacheRule, ...] = ()
    semantic: SemanticCacheSettings | None = None
