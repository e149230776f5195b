"""Store round trips per request with every policy on (the `all` variant of run.sh), counted in-process.

.venv/bin/python bench/round_trips.py [N] [C]: a Gateway with a TPM rule, a daily quota and the exact cache on
SQLite (files in a temporary directory) in front of a tiny aiohttp upstream answering the harness's fixed
chat completion; N requests (default 300) with unique bodies, C at a time (default 1: one after another);
prints the calls to each SQLite store's thread per request (on the request's path and in the background
together). With COSMOS=1 the counters and the cache are on the Cosmos DB API server (node_modules'
cosmosdb-server, started on a free port) instead, and it prints the Cosmos DB operations (HTTP requests) per
request by kind.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web
from inprocess import BODY, ENV, PATH, gateway_config, send_chat

from gateway_core.app import Gateway
from gateway_core.storage import sqlite

calls: collections.Counter[str] = collections.Counter()
# The emulator's well-known key (public, the same in every emulator).
COSMOS_KEY = "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="


def count_calls() -> None:
    original = sqlite._SqliteThread.submit

    def submit(self: sqlite._SqliteThread, fn: Callable[[Any], Any]) -> Any:
        calls[self._path.name] += 1
        return original(self, fn)

    sqlite._SqliteThread.submit = submit  # type: ignore[method-assign]


def count_cosmos_calls() -> None:
    from azure.cosmos.aio import ContainerProxy

    for name in ("patch_item", "create_item", "read_item", "upsert_item"):
        original = getattr(ContainerProxy, name)

        def counted(original: Callable[..., Any], name: str) -> Callable[..., Any]:
            async def call(self: Any, *args: Any, **kwargs: Any) -> Any:
                calls[f"{self.id}.{name}"] += 1
                return await original(self, *args, **kwargs)

            return call

        setattr(ContainerProxy, name, counted(original, name))


@contextlib.contextmanager
def cosmos_server() -> Iterator[str]:
    binary = Path(__file__).parents[1] / "node_modules" / ".bin" / "cosmosdb-server"
    process = subprocess.Popen(
        [str(binary), "-p", "0", "--host", "127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        for line in process.stdout or []:
            if match := re.search(r"connections at (127\.0\.0\.1:\d+)", line):
                yield match.group(1)
                return
        raise SystemExit("the Cosmos DB API server did not start")
    finally:
        process.terminate()
        process.wait(timeout=10)


async def answer(_: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="application/json")


async def main(n: int, concurrency: int, directory: Path, cosmos: str | None) -> None:
    app = web.Application()
    app.router.add_post(PATH, answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    stores = {"health": f"sqlite:///{directory / 'health.db'}"}
    for port_name in ("counters", "cache"):
        url = (
            f"cosmos://{cosmos}/bench?key_env=COSMOS_KEY&create_if_missing=true"
            if cosmos
            else f"sqlite:///{directory / port_name}.db"
        )
        stores[port_name] = url
    config = gateway_config(port, stores, every_policy=True)
    gateway = Gateway(config, env={**ENV, "COSMOS_KEY": COSMOS_KEY})
    await gateway.start()

    for i in range(3):  # warm up: the store files, the previous minute's counters
        await send_chat(gateway, f"{-1 - i}")
    await gateway.tasks.drain()
    calls.clear()
    for start in range(0, n, concurrency):
        await asyncio.gather(*(send_chat(gateway, f"{i}") for i in range(start, min(n, start + concurrency))))
    await gateway.tasks.drain()  # the background settlements and cache puts
    per_request = {name: round(c / n, 2) for name, c in calls.items()}
    print(f"store round trips per request ({n} requests, {concurrency} at a time):", per_request)
    await gateway.close()
    await runner.cleanup()


if __name__ == "__main__":
    count_calls()
    count_cosmos_calls()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        cosmos = stack.enter_context(cosmos_server()) if os.environ.get("COSMOS") == "1" else None
        n, concurrency = (
            (int(sys.argv[1]) if len(sys.argv) > 1 else 300),
            (int(sys.argv[2]) if len(sys.argv) > 2 else 1),
        )
        asyncio.run(main(n, concurrency, Path(tmp), cosmos))
