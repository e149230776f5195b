"""The backends section and routing over backends: each backend's URL, auth and deployments, and the passive
(breaker) and active (probe) health settings."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from ..names import API_VERSION_RULE, is_api_version
from .base import DEFAULT_API_VERSION, WILDCARD, Section, check_deployment_name


class ApiKeyAuth(Section):
    """The backend's own key, read from an environment variable (or a Key Vault reference in Azure)."""

    type: Literal["api_key"] = "api_key"
    key_env: str


class EntraAuth(Section):
    """An Entra ID token from ``DefaultAzureCredential`` (managed identity in Azure, developer login locally)."""

    type: Literal["entra"]
    scope: str = "https://cognitiveservices.azure.com/.default"
    managed_identity_client_id_env: str | None = None


class NoAuth(Section):
    type: Literal["none"]


BackendAuth = Annotated[ApiKeyAuth | EntraAuth | NoAuth, Field(discriminator="type")]


class DeploymentRef(Section):
    """A gateway deployment served by a backend. ``name`` is what clients ask for; ``*`` serves any name."""

    name: str = Field(min_length=1)
    backend_name: str | None = None  # the backend's deployment (Azure) or model (OpenAI) name; default: name
    model: str | None = None  # the model behind it (tokenizer, prices); default: name
    encoding: Literal["o200k_base", "cl100k_base"] | None = None  # default: from the model's name

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return value if value == WILDCARD else check_deployment_name(value)

    @field_validator("backend_name")
    @classmethod
    def _backend_name(cls, value: str | None) -> str | None:
        return None if value is None else check_deployment_name(value)

    @property
    def upstream_name(self) -> str:
        return self.backend_name or self.name


class BreakerSettings(Section):
    """Passive health, APIM-style: which answers count as failures, how many open the breaker, for how long."""

    failure_statuses: tuple[int, ...] = (500, 502, 503, 504)  # plus connection errors and timeouts, always
    failures: int = Field(default=5, ge=1)  # this many failures...
    interval_s: float = Field(default=10.0, gt=0)  # ...within this window open the breaker
    trip_s: float = Field(default=30.0, gt=0)  # open this long, then half-open: one request tests it
    accept_retry_after: bool = True  # a 429 keeps the backend out for its Retry-After (else throttle_s)
    throttle_s: float = Field(default=10.0, gt=0)  # a 429 without a usable Retry-After
    max_retry_after_s: float = Field(default=60.0, gt=0)  # cap on any backend-given Retry-After


class ProbeSettings(Section):
    """Active health probes: a request that costs no tokens (listing models), on a timer."""

    enabled: bool = True
    interval_s: float = Field(default=30.0, ge=1.0)  # `aigw serve`; the Functions timer uses AIGW_HEALTH_CRON
    timeout_s: float = Field(default=5.0, gt=0)
    path: str | None = None  # default: /openai/models?api-version=... (azure) or /v1/models (openai)


class RoutingSettings(Section):
    max_attempts: int = Field(default=3, ge=1)  # backends tried for one client request
    budget_s: float = Field(default=60.0, gt=0)  # total time for those attempts (streams: to the first byte)
    region_header: str = "x-user-region"  # a client's preferred region
    trust_forwarded_region: bool = False  # also read X-Forwarded-Region (set by a trusted front door)
    breaker: BreakerSettings = BreakerSettings()
    probe: ProbeSettings = ProbeSettings()
    sync_interval_s: float = Field(default=2.0, gt=0)  # how often instances share health through the store


class Backend(Section):
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
