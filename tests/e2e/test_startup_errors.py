"""Every kind of start-up error stops `aigw serve` the same way: one `aigw:` message naming the setting, exit
status 2, no traceback, nothing bound."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

BACKEND = {"name": "b1", "url": "http://127.0.0.1:9", "deployments": ["gpt-4o"]}
KEYS = [{"name": "k", "key_env": "STARTUP_TEST_CLIENT_KEY", "user": "alice"}]
GOOD_ENV = {"STARTUP_TEST_CLIENT_KEY": "client-key", "AZURE_OPENAI_API_KEY": "backend-key"}
MEMORY = {"counters": "memory://", "cache": "memory://", "health": "memory://"}
RULE = {"name": "r", "key": "user", "tokens_per_minute": 1000}
UNSET_AUTH = {"type": "api_key", "key_env": "STARTUP_TEST_UNSET"}
SEMANTIC = {"deployments": ["gpt-4o"], "embedding_deployment": "text-embedding-3-small"}

CASES = {
    "unknown key": ({"backends": [BACKEND], "keys": KEYS, "colour": "blue"}, {}, "colour: Extra inputs"),
    "bad store URL in the file": (
        {"backends": [BACKEND], "keys": KEYS, "stores": {"cache": "redis://localhost"}},
        {},
        "stores.cache: unknown store scheme 'redis'",
    ),
    "bad store URL in the environment": (
        {"backends": [BACKEND], "keys": KEYS},
        {"AIGW_HEALTH_URL": "sqlite://relative.db"},
        "environment variable AIGW_HEALTH_URL: bad SQLite URL",
    ),
    "Cosmos DB key variable unset": (
        {
            "backends": [BACKEND],
            "keys": KEYS,
            "limits": {"rules": [RULE]},
            "stores": {**MEMORY, "counters": "cosmos://127.0.0.1:9/aigw?key_env=STARTUP_TEST_UNSET"},
        },
        {},
        "stores.counters: Cosmos DB key_env: environment variable STARTUP_TEST_UNSET is not set",
    ),
    "backend key variable unset": (
        {"backends": [{**BACKEND, "auth": UNSET_AUTH}], "keys": KEYS, "stores": MEMORY},
        {},
        "backends.b1.auth.key_env: environment variable STARTUP_TEST_UNSET is not set",
    ),
    "client key variable unset": (
        {"backends": [BACKEND], "keys": [{**KEYS[0], "key_env": "STARTUP_TEST_UNSET"}], "stores": MEMORY},
        {},
        "keys.k: environment variable STARTUP_TEST_UNSET is not set",
    ),
    "semantic cache deployment not served": (
        {"backends": [BACKEND], "keys": KEYS, "cache": {"enabled": True, "semantic": SEMANTIC}, "stores": MEMORY},
        {},
        "cache.semantic.embedding_deployment: no backend serves text-embedding-3-small",
    ),
    "tokenizer cache unusable": (
        {"backends": [BACKEND], "keys": KEYS, "stores": MEMORY},
        {"TIKTOKEN_CACHE_DIR": "{tmp}/a-file"},
        "TIKTOKEN_CACHE_DIR: cannot use",
    ),
}


def serve(
    tmp_path: Path, config: dict[str, object], env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    (tmp_path / "a-file").write_text("not a directory", encoding="utf-8")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AIGW_", "COSMOS_", "TIKTOKEN_"))}
    full_env.update(GOOD_ENV)
    full_env.update({k: v.format(tmp=tmp_path) for k, v in env.items()})
    return subprocess.run(
        [sys.executable, "-m", "aigw.cli", "serve", "--config", str(path), "--port", "0", *args],
        env=full_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("case", CASES)
def test_each_kind_of_startup_error_is_one_clean_message(tmp_path: Path, case: str) -> None:
    config, env, message = CASES[case]
    result = serve(tmp_path, config, env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("aigw: ") and message in result.stderr, result.stderr
    assert "listening on" not in result.stdout


def test_several_workers_check_the_config_before_starting_any(tmp_path: Path) -> None:
    config, env, message = CASES["backend key variable unset"]
    result = serve(tmp_path, config, env, "--workers", "2")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert message in result.stderr


def _aigw(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aigw.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_the_simulator_and_a_taken_port_fail_as_cleanly_as_the_gateway(tmp_path: Path) -> None:
    bad = tmp_path / "sim.yaml"
    bad.write_text("deployments: [{name: d, ttft_ms: -1}]\nunknown_field: 1\n", encoding="utf-8")
    result = _aigw("simulate", "--config", str(bad), "--port", "0", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("aigw: simulator config") and "unknown_field" in result.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for command in ("simulate", "serve"):
            extra = ["--demo"] if command == "serve" else []
            result = _aigw(command, *extra, "--port", port, cwd=tmp_path)
            assert result.returncode == 2 and "Traceback" not in result.stderr, (command, result.stderr)
            assert "cannot listen on" in result.stderr
    result = _aigw("serve", "--demo", "--workers", "0", cwd=tmp_path)
    assert result.returncode == 2 and "must be 1 or more" in result.stderr
