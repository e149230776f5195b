"""A worker loads what its config uses and no more: numpy only with the semantic cache, and only the tiktoken
encodings of its deployments (each costs tens of MB per worker); another encoding loads off the event loop.

Each case runs in a fresh interpreter, as a worker starts, so what earlier tests imported does not count."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

BUILD = """
import json, sys
import tiktoken.registry
from gateway_core.app import Gateway
from gateway_core.config import config_from_dict

Gateway(config_from_dict(json.loads(sys.argv[1])), env={"BACKEND_KEY": "k", "CLIENT_KEY": "c"})
# tiktoken's own registry: every encoding built in this process, by whichever path
print(json.dumps({"numpy": "numpy" in sys.modules, "encodings": sorted(tiktoken.registry.ENCODINGS)}))
"""


def started(config: dict[str, Any]) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", BUILD, json.dumps(config)], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return answer


def one_model(deployment: str, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    backend = {"name": "b", "url": "http://127.0.0.1:9", "auth": {"type": "api_key", "key_env": "BACKEND_KEY"}}
    return {
        "backends": [{**backend, "deployments": [deployment]}],
        "keys": [{"name": "k", "key_env": "CLIENT_KEY", "user": "u", "tenant": "t"}],
        "stores": {"health": "memory://", "cache": f"sqlite:///{tmp_path / 'cache.db'}"},
        **extra,
    }


def test_a_one_model_config_with_the_exact_cache_loads_neither_numpy_nor_another_encoding(tmp_path: Path) -> None:
    assert started(one_model("gpt-4o", tmp_path, cache={"enabled": True})) == {
        "numpy": False,
        "encodings": ["o200k_base"],
    }


def test_a_gpt_4_deployment_loads_only_its_own_encoding(tmp_path: Path) -> None:
    assert started(one_model("gpt-4", tmp_path)) == {"numpy": False, "encodings": ["cl100k_base"]}


def test_a_wildcard_backend_loads_the_common_encoding_at_start(tmp_path: Path) -> None:
    assert started(one_model("*", tmp_path)) == {"numpy": False, "encodings": ["o200k_base"]}


LOAD_OFF_THE_LOOP = """
import asyncio
from gateway_core.tokens import encodings

async def main():
    task = asyncio.create_task(encodings.load("cl100k_base"))
    await asyncio.sleep(0)  # the task's first step: a load on the event loop would have finished within it
    running = not task.done()
    enc = await task
    print(running, enc.name, len(enc.encode("hello world")), encodings.loaded("o200k_base") is None)

asyncio.run(main())
"""


def test_an_encoding_first_needed_by_a_request_loads_in_a_thread_while_the_loop_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-c", LOAD_OFF_THE_LOOP], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "cl100k_base", "2", "True"]
