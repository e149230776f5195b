"""Which token limits apply to a request, and the counter each one uses."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..config import LimitRule
from ..context import RequestContext

MICRO_USD_PER_USD = 1_000_000
ABSENT = "(none)"  # the counter for requests that lack the key's value (e.g. a missing header)


class LimitKind(enum.StrEnum):
    """A rule's limits; the value prefixes the limit's counter keys in the store."""

    TPM = "tpm"  # tokens per minute, a sliding window
    QUOTA = "quota"  # tokens per quota period (daily, monthly)
    COST = "cost"  # micro-dollars per quota period: a budget in money


@dataclass(slots=True, frozen=True)
class Limit:
    """One limit of one rule: its tokens-per-minute rate, its token quota, or its budget."""

    rule: LimitRule
    kind: LimitKind
    tokens: int  # the limit in its counter's unit: tokens, or micro-dollars for a budget (COST)

    @property
    def label(self) -> str:
        if self.kind is LimitKind.TPM:
            return f"rule '{self.rule.name}' ({self.tokens} tokens per minute per {self.rule.key})"
        if self.kind is LimitKind.COST:
            rule = self.rule
            return f"rule '{rule.name}' ({rule.quota_period} budget of ${rule.cost_quota_usd} per {rule.key})"
        return f"rule '{self.rule.name}' ({self.rules_quota_text()})"

    def rules_quota_text(self) -> str:
        return f"{self.rule.quota_period} quota of {self.tokens} tokens per {self.rule.key}"


def limits_of(rules: tuple[LimitRule, ...]) -> list[Limit]:
    limits = []
    for rule in rules:
        if rule.tokens_per_minute is not None:
            limits.append(Limit(rule, LimitKind.TPM, rule.tokens_per_minute))
        if rule.token_quota is not None:
            limits.append(Limit(rule, LimitKind.QUOTA, rule.token_quota))
        if rule.cost_quota_usd is not None:
            limits.append(Limit(rule, LimitKind.COST, int(rule.cost_quota_usd * MICRO_USD_PER_USD)))
    return limits


def applies(rule: LimitRule, ctx: RequestContext) -> bool:
    if rule.deployments is not None and ctx.deployment not in rule.deployments:
        return False
    return not (rule.tenants is not None and (ctx.principal is None or ctx.principal.tenant not in rule.tenants))


def counter_value(rule: LimitRule, ctx: RequestContext) -> str:
    """The value the rule counts by for this request (the user's name within its tenant, the header's value,
    ...)."""
    principal = ctx.principal
    key = rule.key
    if key == "user":
        # A user name is unique only within its tenant: ``<tenant>/<user>``, the tenant escaped so that no
        # other (tenant, user) pair gives the same value.
        value = f"{_escaped(principal.tenant)}/{principal.user}" if principal and principal.user else None
    elif key == "tenant":
        value = principal.tenant if principal else None
    elif key == "key":
        value = principal.key_id if principal else None
    elif key == "ip":
        value = ctx.request.client_ip
    elif key == "deployment":
        value = ctx.deployment
    else:
        value = ctx.request.headers.get(key[len("header:") :])
    return value or ABSENT


def _escaped(tenant: str) -> str:
    return tenant.replace("%", "%25").replace("/", "%2F")
