"""Who is calling: a gateway key (``api-key`` or ``Authorization: Bearer``) mapped to a principal.

A bearer value with three dot-separated parts is a JWT; JWT validation arrives with the identity issue, and
until then such a token is refused with a message that says so rather than being tried as a key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..config import ConfigError, GatewayConfig, GatewayKey, sha256_hex
from ..context import GatewayResponse, Principal, RequestContext
from ..errors import AuthenticationFailed
from ..pipeline import Handler

ANONYMOUS = Principal(user="anonymous", tenant="default", key_id=None)


class AuthPolicy:
    def __init__(self, config: GatewayConfig, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._no_auth = config.no_auth
        self._by_hash: dict[str, Principal] = {}
        for key in config.keys:
            self._by_hash[self._digest_of(key, env)] = Principal(
                user=key.user,
                tenant=key.tenant,
                key_id=key.name,
                roles=key.roles,
                admin=key.admin,
                allowed_deployments=frozenset(key.deployments) if key.deployments is not None else None,
            )
        if not self._by_hash and not self._no_auth:
            raise ConfigError(
                "no client key is configured: add keys to the config file, set AIGW_API_KEYS, "
                "or run without authentication with `aigw serve --no-auth`"
            )

    @staticmethod
    def _digest_of(key: GatewayKey, env: Mapping[str, str]) -> str:
        if key.sha256 is not None:
            return key.sha256
        if key.key_env is None:  # the config model requires one of the two
            raise ConfigError(f"keys.{key.name}: needs sha256 or key_env")
        secret = env.get(key.key_env, "")
        if not secret:
            raise ConfigError(f"keys.{key.name}: environment variable {key.key_env} is not set")
        return sha256_hex(secret)

    def principal_for(self, headers: Mapping[str, str]) -> Principal:
        """The principal for the request's credential; raises ``AuthenticationFailed``."""
        if self._no_auth:
            return ANONYMOUS
        secret = headers.get("api-key")
        bearer = False
        if not secret:
            authorization = headers.get("authorization", "")
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer":
                secret, bearer = value.strip(), True
        if not secret:
            raise AuthenticationFailed(
                "Missing credentials: send your gateway key in the api-key header or as Authorization: Bearer <key>."
            )
        # The lookup is keyed by the SHA-256 of the secret, so its timing says nothing about the secret itself.
        # A configured key wins even if it has two dots; only an unknown bearer value shaped like a JWT is one.
        principal = self._by_hash.get(sha256_hex(secret))
        if principal is None:
            if bearer and secret.count(".") == 2:
                raise AuthenticationFailed("JWT bearer tokens are not accepted by this gateway; use a gateway key.")
            raise AuthenticationFailed("Invalid gateway key.")
        return principal

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse:
        if not ctx.require_endpoint().public:
            ctx.principal = self.principal_for(ctx.request.headers)
        return await call_next(ctx)
