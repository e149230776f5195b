"""The gateway's configuration: one frozen, validated model, loaded once by the host and passed down.

Secrets never live in the file: backend keys and client keys are named by environment variables (``*_env``),
which in Azure are app settings or Key Vault references. Client keys may also appear as hex SHA-256 hashes.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal, cast
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from .names import API_VERSION_RULE, DEPLOYMENT_NAME_RULE, is_api_version, is_deployment_name
from .store_urls import PORTS, Port, StoreURLError, default_url, parse_store_url
from .usage.prices import load_prices

DEFAULT_API_VERSION = "2024-10-21"
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
WILDCARD = "*"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ConfigError(ValueError):
    """Configuration that cannot be used; the message names the key (and file and line where known)."""


def _require_unique(names: list[str], what: str) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{what} names must be unique: {', '.join(dupes)}")


def _deployment_name(value: str) -> str:
    if not is_deployment_name(value):
        raise ValueError(f"a deployment name {DEPLOYMENT_NAME_RULE}")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApiKeyAuth(_Model):
    """The backend's own key, read from an environment variable (or a Key Vault reference in Azure)."""

    type: Literal["api_key"] = "api_key"
    key_env: str


class EntraAuth(_Model):
    """An Entra ID token from ``DefaultAzureCredential`` (managed identity in Azure, developer login locally)."""

    type: Literal["entra"]
    scope: str = "https://cognitiveservices.azure.com/.default"
    managed_identity_client_id_env: str | None = None


class NoAuth(_Model):
    type: Literal["none"]


BackendAuth = Annotated[ApiKeyAuth | EntraAuth | NoAuth, Field(discriminator="type")]


class DeploymentRef(_Model):
    """A gateway deployment served by a backend. ``name`` is what clients ask for; ``*`` serves any name."""

    name: str = Field(min_length=1)
    backend_name: str | None = None  # the backend's deployment (Azure) or model (OpenAI) name; default: name
    model: str | None = None  # the model behind it (tokenizer, prices); default: name
    encoding: Literal["o200k_base", "cl100k_base"] | None = None  # default: from the model's name

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return value if value == WILDCARD else _deployment_name(value)

    @field_validator("backend_name")
    @classmethod
    def _backend_name(cls, value: str | None) -> str | None:
        return None if value is None else _deployment_name(value)

    @property
    def upstream_name(self) -> str:
        return self.backend_name or self.name


class BreakerSettings(_Model):
    """Passive health, APIM-style: which answers count as failures, how many open the breaker, for how long."""

    failure_statuses: tuple[int, ...] = (500, 502, 503, 504)  # plus connection errors and timeouts, always
    failures: int = Field(default=5, ge=1)  # this many failures...
    interval_s: float = Field(default=10.0, gt=0)  # ...within this window open the breaker
    trip_s: float = Field(default=30.0, gt=0)  # open this long, then half-open: one request tests it
    accept_retry_after: bool = True  # a 429 keeps the backend out for its Retry-After (else throttle_s)
    throttle_s: float = Field(default=10.0, gt=0)  # a 429 without a usable Retry-After
    max_retry_after_s: float = Field(default=60.0, gt=0)  # cap on any backend-given Retry-After


class ProbeSettings(_Model):
    """Active health probes: a request that costs no tokens (listing models), on a timer."""

    enabled: bool = True
    interval_s: float = Field(default=30.0, ge=1.0)  # `aigw serve`; the Functions timer uses AIGW_HEALTH_CRON
    timeout_s: float = Field(default=5.0, gt=0)
    path: str | None = None  # default: /openai/models?api-version=... (azure) or /v1/models (openai)


class RoutingSettings(_Model):
    max_attempts: int = Field(default=3, ge=1)  # backends tried for one client request
    budget_s: float = Field(default=60.0, gt=0)  # total time for those attempts (streams: to the first byte)
    region_header: str = "x-user-region"  # a client's preferred region
    trust_forwarded_region: bool = False  # also read X-Forwarded-Region (set by a trusted front door)
    breaker: BreakerSettings = BreakerSettings()
    probe: ProbeSettings = ProbeSettings()
    sync_interval_s: float = Field(default=2.0, gt=0)  # how often instances share health through the store


class Backend(_Model):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    type: Literal["azure", "openai"] = "azure"
    url: str
    region: str = ""
    priority: int = Field(default=1, ge=0)
    weight: int = Field(default=1, ge=1)
    api_version: str = DEFAULT_API_VERSION  # sent when the client sent none (the OpenAI surface)
    simulator: bool = False  # an `aigw simulate` backend: only these get the client's x-aigw-sim-* headers
    auth: BackendAuth = Field(default_factory=lambda: ApiKeyAuth(key_env="AZURE_OPENAI_API_KEY"))
    timeout_s: float = Field(default=300.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    breaker: BreakerSettings | None = None  # overrides routing.breaker for this backend
    deployments: tuple[DeploymentRef, ...] = Field(min_length=1)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        parts = urlsplit(value)
        try:
            port = parts.port  # raises ValueError for a port outside 0-65535 or not a number
        except ValueError:
            port = 0
        if port == 0 and parts.netloc.rpartition("]")[2].count(":"):  # an explicit port that is not 1-65535
            raise ValueError("has a port that is not a number from 1 to 65535")
        if not parts.hostname:
            raise ValueError("names no host")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError("must not carry credentials, a query or a fragment (keys belong in auth.key_env)")
        return value.rstrip("/")

    @field_validator("api_version")
    @classmethod
    def _api_version(cls, value: str) -> str:
        if not is_api_version(value):
            raise ValueError(f"must be {API_VERSION_RULE}")
        return value

    @field_validator("deployments", mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        # "- gpt-4o" is shorthand for "- name: gpt-4o".
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value


class GatewayKey(_Model):
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


class ServerSettings(_Model):
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


COUNTER_KEYS = ("user", "tenant", "key", "ip", "deployment")
QuotaPeriod = Literal["hourly", "daily", "weekly", "monthly"]


class LimitRule(_Model):
    """A limit per counter key: a tokens-per-minute rate, a token quota and/or a budget in USD per period."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    key: str  # user | tenant | key | ip | deployment | header:<name>
    tokens_per_minute: int | None = Field(default=None, ge=1)
    token_quota: int | None = Field(default=None, ge=1)
    # USD per quota_period, a hard cap on estimated-then-actual cost (counted in whole micro-dollars).
    cost_quota_usd: Decimal | None = None
    quota_period: QuotaPeriod | None = None  # of token_quota and cost_quota_usd both, when a rule sets both
    deployments: tuple[str, ...] | None = None  # applies only to these gateway deployments
    tenants: tuple[str, ...] | None = None  # applies only to callers in these tenants

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        if value in COUNTER_KEYS or (value.startswith("header:") and len(value) > len("header:")):
            return value.lower() if value.startswith("header:") else value
        raise ValueError(f"must be one of {', '.join(COUNTER_KEYS)} or header:<name>")

    @field_validator("cost_quota_usd", mode="before")
    @classmethod
    def _usd(cls, value: Any) -> Decimal | None:
        return None if value is None else budget_usd(value)

    @model_validator(mode="after")
    def _something_to_limit(self) -> LimitRule:
        quotas = self.token_quota is not None or self.cost_quota_usd is not None
        if self.tokens_per_minute is None and not quotas:
            raise ValueError("give tokens_per_minute, token_quota or cost_quota_usd (quotas with quota_period)")
        if quotas != (self.quota_period is not None):
            raise ValueError("token_quota and cost_quota_usd need quota_period, and quota_period needs one of them")
        return self


MAX_BUDGET_USD = Decimal(1_000_000_000)  # 10^15 micro-dollars: exact in every counter store, doubles included


def budget_usd(value: Any) -> Decimal:
    """A budget in USD: a string or an int, more than 0, in whole micro-dollars. Raises ``ValueError``."""
    # A float such as 0.01 has already lost exactness by the time it gets here (as with usage.prices).
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError('give USD as a string or a whole number, e.g. "5" or "0.01"')
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number of USD") from None
    if not amount.is_finite() or amount <= 0 or amount > MAX_BUDGET_USD:
        raise ValueError(f"must be more than 0 and at most {MAX_BUDGET_USD} USD")
    if amount != amount.quantize(Decimal("0.000001")):
        raise ValueError("budgets are counted in whole micro-dollars: at most 6 decimal places")
    return amount


class LimitsSettings(_Model):
    rules: tuple[LimitRule, ...] = ()
    # Completion tokens assumed for admission when a request sets no max_tokens / max_completion_tokens.
    default_completion_tokens: int = Field(default=1024, ge=0)
    quota_exceeded_status: Literal[403, 429] = 403  # 403 as APIM's llm-token-limit answers
    on_store_error: Literal["fail_closed", "fail_open"] = "fail_closed"

    @model_validator(mode="after")
    def _unique(self) -> LimitsSettings:
        _require_unique([r.name for r in self.rules], "rule")
        return self


class CacheRule(_Model):
    """Turns caching on or off, or sets the TTL, for some deployments and/or tenants; the last match wins."""

    deployments: tuple[str, ...] | None = None
    tenants: tuple[str, ...] | None = None
    enabled: bool = True
    ttl_s: int | None = Field(default=None, ge=1)


class SemanticCacheSettings(_Model):
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
        return _deployment_name(value)


class CacheSettings(_Model):
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


class StoreSettings(_Model):
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


class UsageSettings(_Model):
    """Usage records and costs (``stores.usage`` says where they go)."""

    enabled: bool = True  # one record per request (not /healthz); off: nothing is recorded
    # Price overrides, model -> {input, cached_input, output: USD per 1M tokens as strings, aliases: [...]};
    # laid over the built-in table (gateway_core/usage/prices.json), an entry replacing the model's whole entry.
    prices: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # The batched writer (aigw serve): a batch is written when it has flush_max_records or its oldest record is
    # flush_interval_s old; a failed write is retried (retry_initial_s, doubling) and, after spill_after_failures
    # failures or spill_after_s, spilled to a local file (spill_dir, at most spill_max_bytes) and replayed later.
    flush_max_records: int = Field(default=100, ge=1, le=10_000)
    flush_interval_s: float = Field(default=1.0, gt=0, le=300)
    max_buffered_records: int = Field(default=10_000, ge=1)  # beyond it (store down), records spill at once
    retry_initial_s: float = Field(default=0.5, gt=0, le=60)
    spill_after_failures: int = Field(default=3, ge=1)
    spill_after_s: float = Field(default=30.0, gt=0)
    spill_dir: str = ".aigw/usage-spill"
    spill_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # The summariser (the queue consumer): a message whose batch is still missing after max_dequeues deliveries
    # goes to the poison queue; pending batches older than sweep_older_than_s are re-summarised every
    # sweep_interval_s (and at start), so a lost message never loses a batch.
    max_dequeues: int = Field(default=5, ge=1, le=100)
    visibility_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    sweep_interval_s: float = Field(default=300.0, gt=0)
    sweep_older_than_s: float = Field(default=60.0, ge=0)

    @field_validator("prices")
    @classmethod
    def _prices(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        load_prices(value)  # PriceError is a ValueError: reported with the key and line
        return value


class GatewayConfig(_Model):
    server: ServerSettings = ServerSettings()
    backends: tuple[Backend, ...] = Field(min_length=1)
    keys: tuple[GatewayKey, ...] = ()
    routing: RoutingSettings = RoutingSettings()
    limits: LimitsSettings = LimitsSettings()
    cache: CacheSettings = CacheSettings()
    stores: StoreSettings = StoreSettings()
    usage: UsageSettings = UsageSettings()
    # Set by `aigw serve --no-auth` only, never from a file: every caller becomes the anonymous principal.
    no_auth: bool = Field(default=False, exclude=True)

    @model_validator(mode="after")
    def _unique(self) -> GatewayConfig:
        _require_unique([b.name for b in self.backends], "backend")
        _require_unique([k.name for k in self.keys], "key")
        return self

    @model_validator(mode="after")
    def _semantic_deployments_exist(self) -> GatewayConfig:
        semantic = self.cache.semantic
        if semantic is None or any(d.name == WILDCARD for b in self.backends for d in b.deployments):
            return self
        served = set(self.deployment_names())
        for key, names in (
            ("deployments", semantic.deployments),
            ("embedding_deployment", (semantic.embedding_deployment,)),
        ):
            missing = [n for n in names if n not in served]
            if missing:
                raise ValueError(f"cache.semantic.{key}: no backend serves {', '.join(missing)}")
        return self

    @model_validator(mode="after")
    def _budgets_priced(self) -> GatewayConfig:
        # A budget must never be silently free: every deployment a budget rule names needs a price. (Rules without
        # a deployments list, and names a wildcard backend passes through, are checked per request.)
        prices = load_prices(self.usage.prices)
        wildcard = any(d.name == WILDCARD for b in self.backends for d in b.deployments)
        for rule in self.limits.rules:
            if rule.cost_quota_usd is None:
                continue
            for name in rule.deployments or ():
                models = [d.model or d.name for b in self.backends for d in b.deployments if d.name == name]
                if not models and wildcard:
                    models = [name]
                for model in models:
                    if prices.price_of(model) is None:
                        raise ValueError(
                            f"limits.rules '{rule.name}': deployment '{name}' (model '{model}') has no price, so "
                            f"its cost_quota_usd cannot be counted: add '{model}' to usage.prices"
                        )
        return self

    def deployment_names(self) -> list[str]:
        """Every gateway deployment that exists, sorted, without the wildcard."""
        names = {d.name for b in self.backends for d in b.deployments if d.name != WILDCARD}
        return sorted(names)


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
