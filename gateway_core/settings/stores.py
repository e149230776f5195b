"""The stores section: one store URL per port, checked when loaded (the environment's defaults too)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from pydantic import ValidationInfo, field_validator

from ..store_urls import PORTS, Port, StoreURLError, default_url, parse_store_url
from .base import ConfigError, Section


class StoreSettings(Section):
    """One URL per port; unset: AIGW_<PORT>_URL, else Cosmos DB at COSMOS_ENDPOINT, else SQLite in ./.aigw/."""

    counters: str | None = None
    cache: str | None = None
    health: str | None = None
    usage: str | None = None  # sqlite:///.aigw/usage.db by default (never Cosmos DB: it does not serve usage)

    @field_validator("counters", "cache", "health", "usage")
    @classmethod
    def _url(cls, value: str | None, info: ValidationInfo) -> str | None:
        port = cast(Port, info.field_name)  # this validator runs for the port fields only
        if value is not None:
            parse_store_url(value, port)  # StoreURLError is a ValueError: reported with the key and line
        return value

    def check_env(self, env: Mapping[str, str]) -> None:
        """Raise ``ConfigError`` naming the variable if a port left unset here gets a bad URL from ``env``."""
        for port in PORTS:
            if getattr(self, port) is None:
                try:
                    default_url(port, env)
                except StoreURLError as exc:
                    raise ConfigError(f"stores.{port} (unset): {exc}") from None
