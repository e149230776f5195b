"""The front door: client keys (``keys``) and the HTTP server of `aigw serve` (``server``)."""

from __future__ import annotations

import ipaddress
import re

from pydantic import Field, field_validator, model_validator

from .base import DEFAULT_MAX_BODY_BYTES, Section

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class GatewayKey(Section):
    """A client key: its SHA-256 (hex) in the file, or the key itself in an environment variable."""

    name: str = Field(min_length=1)
    sha256: str | None = None
    key_env: str | None = None
    user: str = Field(min_length=1)
    tenant: str = "default"
    admin: bool = False
    roles: tuple[str, ...] = ()
    deployments: tuple[str, ...] | None = None  # allowed gateway deployments; absent: all

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is not None and not _HEX64.match(value.lower()):
            raise ValueError("must be 64 hex digits (the SHA-256 of the key)")
        return value.lower() if value else value

    @model_validator(mode="after")
    def _one_source(self) -> GatewayKey:
        if (self.sha256 is None) == (self.key_env is None):
            raise ValueError("give exactly one of sha256 or key_env")
        return self


class ServerSettings(Section):
    """The HTTP server of `aigw serve` (on Functions the host owns the socket: only max_body_bytes and
    trusted_proxies apply there)."""

    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024)
    header_timeout_s: float = Field(default=10.0, gt=0)  # connect to end of the request head
    max_head_bytes: int = Field(default=64 * 1024, ge=1024)  # request line and headers (else 431)
    max_target_bytes: int = Field(default=8 * 1024, ge=256)  # the request target, path and query (else 414)
    body_timeout_s: float = Field(default=30.0, gt=0)  # longest wait for the next piece of a body (else 408)
    keep_alive_s: float = Field(default=5.0, gt=0)  # idle keep-alive connections are closed after this
    # Bytes/s a body must average: its deadline is body_timeout_s plus 1 s per this many bytes (else 408).
    body_min_rate: int = Field(default=500, ge=1)
    write_timeout_s: float = Field(default=30.0, gt=0)  # longest a client may leave an answer unread (then closed)
    max_connections_per_peer: int = Field(default=256, ge=1)  # per worker; trusted_proxies are not capped
    max_connections: int | None = Field(default=None, ge=1)  # per worker; None: from the descriptor limit
    # Peers (addresses or CIDR networks) whose X-Forwarded-For is believed; empty: the peer is the client.
    trusted_proxies: tuple[str, ...] = ()

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network") from None
        return value
