"""`aigw serve --demo`: the gateway in front of two simulated regional backends, with sample keys.

As later features land, the demo turns them on with sample settings, so it always shows the whole product.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

from gateway_core.config import GatewayConfig, config_from_dict, sha256_hex
from gateway_core.simulator.app import SimulatorApp
from gateway_core.simulator.settings import SimConfig, SimDeployment

from .serve import BackgroundServers

DEMO_KEY = "aigw-demo-key"
DEMO_ADMIN_KEY = "aigw-demo-admin"
DEMO_DEPLOYMENTS = ("gpt-4o", "gpt-4o-mini", "text-embedding-3-small")
_BACKEND_KEY_ENV = "AIGW_DEMO_BACKEND_KEY"
DEMO_KEY_2 = "aigw-demo-key-2"  # another tenant, to see cache isolation by hand
_REGIONS = (("sim-eastus", "eastus", 1), ("sim-westeurope", "westeurope", 2))


def start_demo_backends(servers: BackgroundServers, stores: dict[str, str] | None = None) -> GatewayConfig:
    """Start the simulated backends and return the gateway config that fronts them (on ``stores``, a URL per
    port, when given: the local Azure stack; else the embedded defaults)."""
    # A fresh backend key every run: the demo shows that only the gateway ever holds it.
    backend_key = os.environ.setdefault(_BACKEND_KEY_ENV, secrets.token_hex(16))
    backends: list[dict[str, Any]] = []
    for name, region, priority in _REGIONS:
        sim = SimConfig(
            api_key=backend_key,
            region=region,
            ttft_ms=120.0,
            tokens_per_s=120.0,
            completion_tokens=24,
            deployments=tuple(
                SimDeployment(name=d, model=_model_of(d), embedding_dimensions=1536) for d in DEMO_DEPLOYMENTS
            ),
        )
        port = servers.serve(SimulatorApp(sim))
        backends.append(
            {
                "name": name,
                "url": f"http://127.0.0.1:{port}",
                "region": region,
                "priority": priority,
                "simulator": True,  # so x-aigw-sim-* headers (faults, latency) work against the demo
                "auth": {"type": "api_key", "key_env": _BACKEND_KEY_ENV},
                "deployments": [{"name": d, "model": _model_of(d)} for d in DEMO_DEPLOYMENTS],
            }
        )
    user_key = os.environ.get("AIGW_DEMO_KEY") or DEMO_KEY
    return config_from_dict(
        {
            "backends": backends,
            "keys": [
                {"name": "demo", "sha256": sha256_hex(user_key), "user": "demo", "tenant": "demo"},
                {"name": "demo-2", "sha256": sha256_hex(DEMO_KEY_2), "user": "demo-2", "tenant": "demo-2"},
                {
                    "name": "demo-admin",
                    "sha256": sha256_hex(DEMO_ADMIN_KEY),
                    "user": "admin",
                    "tenant": "demo",
                    "admin": True,
                },
            ],
            # The demo user's limits, so every answer shows x-ratelimit-* and quota headers counting down.
            "limits": {
                "rules": [
                    {"name": "demo-user-tpm", "key": "user", "tokens_per_minute": 50_000},
                    {"name": "demo-user-daily", "key": "user", "token_quota": 1_000_000, "quota_period": "daily"},
                    # Tenant demo-2 has a budget in money: $5 a month (x-aigw-budget-remaining-usd).
                    {
                        "name": "demo-2-budget",
                        "key": "tenant",
                        "tenants": ["demo-2"],
                        "cost_quota_usd": "5",
                        "quota_period": "monthly",
                    },
                ]
            },
            # Exact caching for every deployment (tenant scope, 1 hour); semantic caching for gpt-4o-mini.
            "cache": {
                "enabled": True,
                "scope": "tenant",
                "ttl_s": 3600,
                "semantic": {"deployments": ["gpt-4o-mini"], "embedding_deployment": "text-embedding-3-small"},
            },
            # Every request recorded to the embedded store (./.aigw/usage.db) and summarised in-process; the
            # demo deployments' models are in the built-in price table, so every record has its cost.
            "usage": {"enabled": True},
            **({"stores": stores} if stores else {}),
        },
        source="demo",
    )


def _model_of(deployment: str) -> str:
    return {"gpt-4o": "gpt-4o-2024-08-06", "gpt-4o-mini": "gpt-4o-mini-2024-07-18"}.get(deployment, deployment)


def banner(url: str, config: GatewayConfig, emulators: str = "") -> str:
    """The demo's banner; ``emulators``: the local Azure stack's details (where the state lives instead)."""
    text = _banner(url, config)
    if not emulators:
        return text
    for embedded, azure in (
        ("counters in ./.aigw/counters.db", "counters in Cosmos DB"),
        ("; ./.aigw/cache.db)", "; in Cosmos DB)"),
        ("(./.aigw/usage.db)", "(Azurite table aigwusage)"),
    ):
        text = text.replace(embedded, azure)
    return text.replace("Press Ctrl+C to stop.", emulators.strip("\n") + "\n\nPress Ctrl+C to stop.")


def _banner(url: str, config: GatewayConfig) -> str:
    key = os.environ.get("AIGW_DEMO_KEY") or DEMO_KEY
    east = next(b.url for b in config.backends if b.region == "eastus")
    return f"""
aigw demo gateway: {url}
  backends: two simulated regions (eastus first, westeurope as failover), deployments {", ".join(DEMO_DEPLOYMENTS)}
  client key: {key}    admin key: {DEMO_ADMIN_KEY}    another tenant's key: {DEMO_KEY_2}
  limits: the demo user has 50,000 tokens per minute and 1,000,000 per day (headers x-ratelimit-*,
          x-aigw-quota-remaining-tokens, x-aigw-tokens-consumed; counters in ./.aigw/counters.db)
          tenant demo-2 ({DEMO_KEY_2}) has a $5 monthly budget (x-aigw-budget-remaining-usd)
  cache:  deterministic requests (temperature 0, a seed, embeddings) are cached per tenant for an hour, and
          gpt-4o-mini also semantically (x-aigw-cache: MISS, HIT, SEMANTIC-HIT or BYPASS; ./.aigw/cache.db)
  usage:  every request recorded with its cost (./.aigw/usage.db), summarised in the background

Try it:
  curl -si '{url}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21' \\
    -H 'api-key: {key}' -H 'content-type: application/json' \\
    -d '{{"messages": [{{"role": "user", "content": "Hello"}}], "temperature": 0}}'

  # the openai SDK (scripts/demo installs it into .venv):
  .venv/bin/python -c 'from openai import AzureOpenAI
c = AzureOpenAI(azure_endpoint="{url}", api_key="{key}", api_version="2024-10-21")
r = c.chat.completions.create(model="gpt-4o", messages=[{{"role": "user", "content": "Hello"}}])
print(r.choices[0].message.content)'

  curl -s {url}/status -H 'api-key: {DEMO_ADMIN_KEY}'   # backends and health: admin keys only

Usage and cost (admin keys see everyone's; other keys their own user's):
  curl -s '{url}/usage/summary?group_by=deployment' -H 'api-key: {DEMO_ADMIN_KEY}'
  curl -s '{url}/usage/records?limit=5' -H 'api-key: {key}'
  .venv/bin/aigw usage summary --url {url} --key {DEMO_ADMIN_KEY} --group-by model
  .venv/bin/aigw usage prices --url {url} --key {DEMO_ADMIN_KEY}

Watch failover: throttle the eastus region (its simulator), send requests, see x-aigw-backend change:
  curl -s -X POST {east}/++/config -d '{{"faults": [{{"kind": "429", "retry_after_s": 30}}]}}'
  curl -s -X POST {east}/++/config -d '{{"faults": []}}'     # heal it
Press Ctrl+C to stop.
"""
