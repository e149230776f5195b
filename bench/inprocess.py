"""What the in-process benchmarks (policy_cpu.py, round_trips.py) share: the gateway config of run.sh's variants
in front of one upstream, and a chat completion sent straight to ``Gateway.handle``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from gateway_core.app import Gateway
from gateway_core.config import GatewayConfig, config_from_dict
from gateway_core.context import GatewayRequest, GatewayResponse

BODY = (Path(__file__).parent / "harness" / "chat_body.json").read_bytes()  # the harness's fixed answer
PATH = "/openai/deployments/gpt-4o/chat/completions"
ENV = {"BACKEND_KEY": "backend", "CLIENT_KEY": "client"}


def gateway_config(upstream_port: int, stores: dict[str, str], every_policy: bool) -> GatewayConfig:
    """One backend at ``upstream_port``, one client key (``CLIENT_KEY``); with ``every_policy``, run.sh's `all`:
    a TPM rule and a daily quota too high to refuse anything, and the exact cache. USAGE=off in the environment
    turns usage recording off (in both)."""
    raw: dict[str, Any] = {
        "backends": [
            {
                "name": "upstream",
                "url": f"http://127.0.0.1:{upstream_port}",
                "auth": {"type": "api_key", "key_env": "BACKEND_KEY"},
                "deployments": ["gpt-4o"],
            }
        ],
        "keys": [{"name": "bench", "key_env": "CLIENT_KEY", "user": "bench", "tenant": "bench"}],
        "stores": stores,
    }
    if os.environ.get("USAGE") == "off":  # usage recording is on by default; USAGE=off measures without it
        raw["usage"] = {"enabled": False}
    if every_policy:
        raw["limits"] = {
            "rules": [
                {"name": "tpm", "key": "user", "tokens_per_minute": 10**12},
                {"name": "daily", "key": "tenant", "token_quota": 10**12, "quota_period": "daily"},
            ]
        }
        raw["cache"] = {"enabled": True}
    return config_from_dict(raw)


async def send_chat(gateway: Gateway, tag: str) -> None:
    """One chat completion whose body is unique by ``tag``, the way the host adapters hand it over (the head
    checked first, then the rest of the pipeline with the body); anything but a 200 stops the benchmark."""
    message = {"role": "user", "content": f"Why does low overhead matter? ({tag})"}
    body = orjson.dumps({"model": "gpt-4o", "messages": [message], "temperature": 0, "max_tokens": 100})
    headers = {"api-key": "client", "content-type": "application/json"}
    head = GatewayRequest("POST", PATH, {"api-version": "2024-10-21"}, headers, client_ip="127.0.0.1")
    checked = await gateway.check_head(head)
    if isinstance(checked, GatewayResponse):
        raise SystemExit(f"request {tag}: status {checked.status} on its head")
    response = await gateway.handle_checked(checked, body, len(body))
    if response.status != 200:
        raise SystemExit(f"request {tag}: status {response.status}")
