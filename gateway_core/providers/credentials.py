"""The backend's own credential, added to every upstream call; the client's credential never goes upstream."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol, assert_never

from ..clock import Clock
from ..config import ApiKeyAuth, Backend, ConfigError, EntraAuth, NoAuth
from ..errors import ServiceUnavailable

if TYPE_CHECKING:
    from azure.identity.aio import DefaultAzureCredential

# Refresh an Entra token this long before it expires, so no request goes out with a token about to lapse.
_REFRESH_MARGIN_S = 300.0


class Credential(Protocol):
    async def headers(self) -> list[tuple[str, str]]:
        """Headers that authenticate the gateway to the backend; raises ``ServiceUnavailable`` if unobtainable."""
        ...

    async def close(self) -> None: ...


class StaticHeaders:
    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self._headers = headers

    async def headers(self) -> list[tuple[str, str]]:
        return self._headers

    async def close(self) -> None:
        return None


class EntraToken:
    """A bearer token from ``DefaultAzureCredential``, cached until shortly before it expires."""

    def __init__(self, auth: EntraAuth, clock: Clock, env: Mapping[str, str]) -> None:
        self._scope = auth.scope
        self._client_id = env.get(auth.managed_identity_client_id_env) if auth.managed_identity_client_id_env else None
        self._clock = clock
        self._credential: DefaultAzureCredential | None = None  # made at the first call, with its import
        self._cached: tuple[list[tuple[str, str]], float] | None = None
        self._lock = asyncio.Lock()

    async def headers(self) -> list[tuple[str, str]]:
        cached = self._cached
        if cached is not None and self._clock.now_s() < cached[1] - _REFRESH_MARGIN_S:
            return cached[0]
        async with self._lock:  # one token request at a time, not one per waiting caller
            cached = self._cached
            if cached is not None and self._clock.now_s() < cached[1] - _REFRESH_MARGIN_S:
                return cached[0]
            from azure.core.exceptions import ClientAuthenticationError
            from azure.identity.aio import DefaultAzureCredential

            if self._credential is None:
                # Passing None would override AZURE_CLIENT_ID and force the system-assigned identity, which an
                # app with only a user-assigned one does not have: pass the id only when the config names one.
                named = {"managed_identity_client_id": self._client_id} if self._client_id else {}
                self._credential = DefaultAzureCredential(**named)
            credential = self._credential
            try:
                token = await credential.get_token(self._scope)
            except ClientAuthenticationError as exc:
                raise ServiceUnavailable(
                    "The gateway could not obtain an Entra ID token for the backend.", code="backend_credential"
                ) from exc
            headers = [("authorization", f"Bearer {token.token}")]
            self._cached = (headers, float(token.expires_on))
            return headers

    async def close(self) -> None:
        close = getattr(self._credential, "close", None)
        if close is not None:
            await close()


def credential_for(backend: Backend, clock: Clock, env: Mapping[str, str] | None = None) -> Credential:
    """The credential for ``backend``; raises ``ConfigError`` at start if a key's variable is missing."""
    env = os.environ if env is None else env
    auth = backend.auth
    if isinstance(auth, ApiKeyAuth):
        secret = env.get(auth.key_env, "")
        if not secret:
            raise ConfigError(f"backends.{backend.name}.auth.key_env: environment variable {auth.key_env} is not set")
        if backend.type == "azure":
            return StaticHeaders([("api-key", secret)])
        return StaticHeaders([("authorization", f"Bearer {secret}")])
    if isinstance(auth, EntraAuth):
        return EntraToken(auth, clock, env)
    if isinstance(auth, NoAuth):
        return StaticHeaders([])
    assert_never(auth)
