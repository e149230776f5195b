"""The whole gateway config: every section, and the checks that need more than one of them."""

from __future__ import annotations

from pydantic import Field, model_validator

from .backends import Backend, RoutingSettings
from .base import WILDCARD, Section, require_unique
from .cache import CacheSettings
from .limits import LimitsSettings
from .server import GatewayKey, ServerSettings
from .stores import StoreSettings
from .usage import UsageSettings


class GatewayConfig(Section):
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
        require_unique([b.name for b in self.backends], "backend")
        require_unique([k.name for k in self.keys], "key")
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
        prices = self.usage.price_table
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
