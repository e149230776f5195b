"""bench/functions_flush.py: the time each Functions HTTP invocation adds to write its usage record (not a test).

On Functions the writer has no background task: each invocation flushes its record (a one-record batch and a
queue message) before it ends. This runs the Functions host in-process (as tests/functions do) in front of
`aigw simulate` (no latency), one invocation at a time, and times the flush alone and the whole invocation,
with the usage store on SQLite and on Table Storage (Azurite, started here).
Usage: .venv/bin/python bench/functions_flush.py [N]
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aigw.functions_host import FunctionsHost  # noqa: E402
from gateway_core.app import Gateway  # noqa: E402
from tests.azurite import run_azurite  # noqa: E402
from tests.functions.test_function_app import body_of, starlette_request  # noqa: E402
from tests.servers import CLIENT_KEY, GATEWAY_ENV, gateway_config, run_aigw, write_yaml  # noqa: E402

SIM = {"api_key": GATEWAY_ENV["TEST_BACKEND_KEY"], "deployments": [{"name": "gpt-4o"}], "ttft_ms": 0}


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[int(len(ordered) * 0.95) - 1]
    return f"p50 {statistics.median(ordered):6.2f} ms  p95 {p95:6.2f} ms"


async def run(label: str, usage_url: str, sim_url: str, work: Path, count: int) -> None:
    config = gateway_config(sim_url, usage={"enabled": True})
    config["stores"] = {"health": "memory://", "counters": "memory://", "cache": "memory://", "usage": usage_url}
    os.environ["AIGW_CONFIG"] = str(write_yaml(work / f"{label}.yaml", config))
    host = FunctionsHost(ROOT)
    flushes: list[float] = []
    original = Gateway.flush_usage

    async def timed(gateway: Gateway) -> None:
        started = time.perf_counter()
        await original(gateway)
        flushes.append((time.perf_counter() - started) * 1000)

    Gateway.flush_usage = timed  # type: ignore[method-assign]
    body = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    totals: list[float] = []
    try:
        for n in range(count + 20):
            started = time.perf_counter()
            response = await host.handle(
                starlette_request("POST", "/v1/chat/completions", body, {"api-key": CLIENT_KEY})
            )
            await body_of(response)
            if n >= 20:  # the first ones open connections and create tables
                totals.append((time.perf_counter() - started) * 1000)
        flushes = flushes[20:]
    finally:
        Gateway.flush_usage = original  # type: ignore[method-assign]
        await host.close()
    print(f"{label:8} flush {percentiles(flushes)}   whole invocation {percentiles(totals)}")


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    for name, value in GATEWAY_ENV.items():
        os.environ[name] = value
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.chdir(work)
        write_yaml(work / "sim.yaml", SIM)
        with run_aigw(["simulate", "--config", str(work / "sim.yaml")]) as sim:
            asyncio.run(run("sqlite", f"sqlite:///{work}/usage.db", sim.url, work, count))
            with run_azurite(work / "azurite") as azurite:
                os.environ["BENCH_AZURITE"] = azurite.connection_string
                url = "tables://?connection_env=BENCH_AZURITE&create_if_missing=true"
                asyncio.run(run("tables", url, sim.url, work, count))


if __name__ == "__main__":
    main()
