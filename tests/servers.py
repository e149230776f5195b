"""Start `aigw serve` and `aigw simulate` as real processes on free loopback ports, and stop them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

_LISTENING = re.compile(r"listening on (http://\S+)")
BACKEND_KEY = "sim-backend-secret-0123456789"
CLIENT_KEY = "client-key-alice"
OTHER_KEY = "client-key-bob"
THIRD_KEY = "client-key-carol"


@dataclass
class Running:
    url: str
    process: subprocess.Popen[str]
    output: list[str]


@contextmanager
def run_aigw(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Iterator[Running]:
    """Run `aigw ARGS --port 0`; yield once it printed its URL (its socket is bound and listening)."""
    full_env = {**os.environ, **(env or {})}
    # Each server gets its own working directory, so its embedded state (./.aigw/) is its own.
    own_dir = None
    if cwd is None:
        own_dir = tempfile.TemporaryDirectory(prefix="aigw-test-")
        cwd = Path(own_dir.name)
    process = subprocess.Popen(
        [sys.executable, "-m", "aigw.cli", *args, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=full_env,
        cwd=cwd,
    )
    assert process.stdout is not None
    url = None
    output = []
    for line in process.stdout:
        output.append(line)
        match = _LISTENING.search(line) or re.search(r"gateway: (http://\S+)", line)
        if match:
            url = match.group(1)
            break
    if url is None:
        process.wait(timeout=10)
        raise RuntimeError("aigw did not start:\n" + "".join(output))
    # Keep draining the pipe so a chatty server never blocks on a full pipe buffer.
    drain = threading.Thread(target=lambda: output.extend(process.stdout or []), daemon=True)
    drain.start()
    try:
        yield Running(url, process, output)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        drain.join(timeout=5)
        if own_dir is not None:
            own_dir.cleanup()


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def gateway_config(sim_url: str, **overrides: Any) -> dict[str, Any]:
    """A gateway config in front of one simulator; client keys for alice and carol (contoso) and bob (fabrikam)."""
    config: dict[str, Any] = {
        "backends": [
            {
                "name": "sim-east",
                "url": sim_url,
                "region": "eastus",
                "simulator": True,  # the tests steer it with x-aigw-sim-* headers
                "auth": {"type": "api_key", "key_env": "TEST_BACKEND_KEY"},
                "deployments": [
                    {"name": "gpt-4o", "model": "gpt-4o"},
                    "gpt-4o-mini",
                    "text-embedding-3-small",
                    {"name": "slow-stream", "backend_name": "slow"},
                ],
            }
        ],
        "keys": [
            {"name": "alice", "key_env": "TEST_CLIENT_KEY", "user": "alice", "tenant": "contoso"},
            {
                "name": "bob",
                "key_env": "TEST_OTHER_KEY",
                "user": "bob",
                "tenant": "fabrikam",
                "deployments": ["gpt-4o-mini"],
            },
            {"name": "carol", "key_env": "TEST_THIRD_KEY", "user": "carol", "tenant": "contoso", "admin": True},
        ],
        # These tests inject faults into one shared backend on purpose; keep it in rotation between them.
        # Routing tests configure health and failover themselves.
        "routing": {"breaker": {"failures": 1000, "max_retry_after_s": 0.001}, "probe": {"enabled": False}},
        "stores": {"health": "memory://"},
    }
    config.update(overrides)
    return config


GATEWAY_ENV = {
    "TEST_BACKEND_KEY": BACKEND_KEY,
    "TEST_CLIENT_KEY": CLIENT_KEY,
    "TEST_OTHER_KEY": OTHER_KEY,
    "TEST_THIRD_KEY": THIRD_KEY,
}


def sim_requests(sim_url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{sim_url}/_sim/requests", timeout=5) as response:
        return list(json.load(response)["requests"])


def clear_sim_requests(sim_url: str) -> None:
    request = urllib.request.Request(f"{sim_url}/_sim/requests", method="DELETE")
    with urllib.request.urlopen(request, timeout=5):
        pass


ROOT = Path(__file__).resolve().parents[1]
COSMOS_KEY_ENV = {
    "AIGW_TEST_COSMOS_KEY": "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="
}


@contextmanager
def run_cosmos() -> Iterator[str]:
    """The Cosmos DB API server (npm @vercel/cosmosdb-server, patched to answer 404) on a free port."""
    binary = ROOT / "node_modules" / ".bin" / "cosmosdb-server"
    if not binary.exists():
        raise RuntimeError("the Cosmos DB API server is not installed: run scripts/test (it runs npm ci)")
    process = subprocess.Popen(
        [str(binary), "-p", "0", "--host", "127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    address = None
    for line in process.stdout:
        match = re.search(r"connections at (127\.0\.0\.1:\d+)", line)
        if match:
            address = match.group(1)
            break
    if address is None:
        process.kill()
        raise RuntimeError("the Cosmos DB API server did not start")
    drain = threading.Thread(target=lambda: [None for _ in process.stdout or []], daemon=True)
    drain.start()
    try:
        yield address
    finally:
        process.terminate()
        process.wait(timeout=10)
        drain.join(timeout=5)


def eventually(check: Callable[[], Any], patience_s: float = 30.0) -> Any:
    """``check()`` once it is truthy, polled every 0.1 s: for state another process writes, where there is no
    event to wait on. Fails after ``patience_s`` (generous: a loaded CI box)."""
    deadline = time.monotonic() + patience_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def stored_usage(url: str, env: dict[str, str] | None = None) -> tuple[list[Any], dict[Any, Any]]:
    """Every usage record and summary row in the store at ``url`` (read while a gateway runs, or after)."""
    import asyncio

    from gateway_core.storage.factory import usage_store
    from gateway_core.usage.record import RecordQuery, SummaryQuery

    async def read() -> tuple[list[Any], dict[Any, Any]]:
        store = usage_store(url, env)
        await store.start()
        try:
            records = await store.records(RecordQuery("2000-01-01", "2100-01-01", limit=100_000))
            return records, await store.summaries(SummaryQuery("2000-01-01", "2100-01-01"))
        finally:
            await store.close()

    return asyncio.run(read())
