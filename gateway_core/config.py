"""The gateway's configuration: one frozen, validated model, loaded once by the host and passed down.

This module loads it (a YAML file, YAML text or zero-config from the environment, plus ``AIGW_API_KEYS``) and
names each bad key with its file and line; the model's sections are in ``settings/``, re-exported here.

Secrets never live in the file: backend keys and client keys are named by environment variables (``*_env``),
which in Azure are app settings or Key Vault references. Client keys may also appear as hex SHA-256 hashes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .settings.backends import (
    ApiKeyAuth,
    Backend,
    BackendAuth,
    BreakerSettings,
    DeploymentRef,
    EntraAuth,
    NoAuth,
    ProbeSettings,
    RoutingSettings,
)
from .settings.base import DEFAULT_API_VERSION, DEFAULT_MAX_BODY_BYTES, WILDCARD, ConfigError
from .settings.cache import CacheRule, CacheSettings, SemanticCacheSettings
from .settings.gateway import GatewayConfig
from .settings.limits import COUNTER_KEYS, MAX_BUDGET_USD, LimitRule, LimitsSettings, QuotaPeriod, budget_usd
from .settings.server import GatewayKey, ServerSettings
from .settings.stores import StoreSettings
from .settings.usage import UsageSettings

__all__ = [
    "COUNTER_KEYS",
    "DEFAULT_API_VERSION",
    "DEFAULT_MAX_BODY_BYTES",
    "MAX_BUDGET_USD",
    "WILDCARD",
    "ApiKeyAuth",
    "Backend",
    "BackendAuth",
    "BreakerSettings",
    "CacheRule",
    "CacheSettings",
    "ConfigError",
    "DeploymentRef",
    "EntraAuth",
    "GatewayConfig",
    "GatewayKey",
    "LimitRule",
    "LimitsSettings",
    "NoAuth",
    "ProbeSettings",
    "QuotaPeriod",
    "RoutingSettings",
    "SemanticCacheSettings",
    "ServerSettings",
    "StoreSettings",
    "UsageSettings",
    "budget_usd",
    "config_from_dict",
    "keys_from_env_list",
    "load_config",
    "load_config_text",
    "sha256_hex",
    "with_env_keys",
    "zero_config",
]


def sha256_hex(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def keys_from_env_list(value: str) -> list[GatewayKey]:
    """``AIGW_API_KEYS``: comma-separated keys, each its own user (first 8 hex of its SHA-256), tenant default."""
    keys = []
    for raw in value.split(","):
        secret = raw.strip()
        if secret:
            digest = sha256_hex(secret)
            keys.append(GatewayKey(name=f"env-{digest[:8]}", sha256=digest, user=digest[:8], tenant="default"))
    return keys


def zero_config(env: Mapping[str, str]) -> GatewayConfig:
    """The config `aigw serve` uses with no file: any deployment name proxied to ``AZURE_OPENAI_ENDPOINT``."""
    endpoint = env.get("AZURE_OPENAI_ENDPOINT", "").strip()
    if not endpoint:
        raise ConfigError(
            "no configuration: pass --config FILE (or set AIGW_CONFIG), or set AZURE_OPENAI_ENDPOINT and "
            "AZURE_OPENAI_API_KEY to proxy every deployment to one Azure OpenAI resource, or run `aigw serve --demo`"
        )
    if not env.get("AZURE_OPENAI_API_KEY"):
        raise ConfigError("AZURE_OPENAI_ENDPOINT is set but AZURE_OPENAI_API_KEY is not")
    return _validate(
        {
            "backends": [
                {
                    "name": "default",
                    "url": endpoint,
                    "api_version": env.get("OPENAI_API_VERSION") or DEFAULT_API_VERSION,
                    "auth": {"type": "api_key", "key_env": "AZURE_OPENAI_API_KEY"},
                    "deployments": [WILDCARD],
                }
            ]
        },
        source="zero-config (environment)",
        nodes=None,
    )


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Load and validate the YAML file at ``path`` (or zero-config when None); add ``AIGW_API_KEYS`` keys.

    Raises ``ConfigError`` naming the bad key, file and line.
    """
    env = os.environ if env is None else env
    if path is None:
        config = zero_config(env)
    else:
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{file}: not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
        config = _parse_yaml(text, source=str(file))
    config.stores.check_env(env)
    return with_env_keys(config, env)


def load_config_text(text: str, source: str, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """As ``load_config`` for YAML given as text (the Functions app setting ``AIGW_CONFIG``); errors name
    ``source`` and the line within ``text``."""
    env = os.environ if env is None else env
    config = _parse_yaml(text, source=source)
    config.stores.check_env(env)
    return with_env_keys(config, env)


def _parse_yaml(text: str, *, source: str) -> GatewayConfig:
    try:
        data = yaml.safe_load(text)
        nodes = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of settings")
    return _validate(data, source=source, nodes=nodes)


def with_env_keys(config: GatewayConfig, env: Mapping[str, str]) -> GatewayConfig:
    extra = keys_from_env_list(env.get("AIGW_API_KEYS", ""))
    if not extra:
        return config
    return config.model_copy(update={"keys": (*config.keys, *extra)})


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> GatewayConfig:
    return _validate(data, source=source, nodes=None)


def _validate(data: dict[str, Any], *, source: str, nodes: yaml.Node | None) -> GatewayConfig:
    if isinstance(data, Mapping) and "no_auth" in data:
        # A field of the model (set by `aigw serve --no-auth`), but never from a config: a file or app setting
        # that could say it would open every endpoint to callers without a key.
        line = _line_of(nodes, ("no_auth",))
        where = f"{source}:{line}" if line else source
        raise ConfigError(
            f"invalid configuration:\n  {where}: no_auth: not a setting; authentication is turned off only by"
            " `aigw serve --no-auth`, for local use"
        )
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        keys = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "tagged-union"))]
            # Discriminated unions add the tag name to the location; drop what is not a real key.
            keys.append(".".join(p for p in loc if p not in {"api_key", "entra", "none"}) or "(top level)")
        for err, key in zip(exc.errors(), keys, strict=True):
            if err["type"] == "too_short" and any(other.startswith(key + ".") for other in keys):
                continue  # "backends: at least 1 item" only because an item inside was invalid: said already
            line = _line_of(nodes, err["loc"])
            where = f"{source}:{line}" if line else source
            problems.append(f"{where}: {key}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the YAML node at ``loc`` (or of its nearest existing parent)."""
    if node is None:
        return None
    line: int = node.start_mark.line + 1
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node = child
        line = node.start_mark.line + 1
    return line
