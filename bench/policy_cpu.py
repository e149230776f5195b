"""The gateway's CPU per request with every policy on against none, in-process: a measure the neighbours on a
shared machine disturb far less than req/s.

.venv/bin/python bench/policy_cpu.py [N] [C] [ROUNDS]: one process builds two Gateways on uvloop, `plain` (no
limits, no cache) and `all` (TPM rule + daily quota + exact cache on SQLite, as run.sh's `all`), in front of
an upstream in another process (aiohttp, the harness's fixed answer), and sends each N requests with unique
bodies, C at a time (defaults 2,000, 1, 5), alternating; prints the median over ROUNDS of this process's CPU
(all its threads: the event loop and the stores') and wall time per request, and that CPU split by thread
(the event loop, each store's). USAGE=off turns usage recording off in both. Compare code with
PYTHONPATH=<export of it>.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvloop
from inprocess import ENV, PATH, gateway_config, send_chat

from gateway_core.app import Gateway
from gateway_core.config import GatewayConfig

UPSTREAM = """
import sys
from pathlib import Path
from aiohttp import web
body = Path(sys.argv[1]).read_bytes()
async def answer(_):
    return web.Response(body=body, content_type="application/json")
app = web.Application()
app.router.add_post(sys.argv[2], answer)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[3]), print=lambda *_: print("ready", flush=True))
"""


def config(port: int, directory: Path | None) -> GatewayConfig:
    """`plain` (``directory`` None) or `all`, counters and cache on SQLite in ``directory``."""
    if directory is None:
        return gateway_config(port, {"health": "memory://"}, every_policy=False)
    stores = {"health": "memory://", "counters": f"sqlite:///{directory}/counters.db"}
    return gateway_config(port, stores | {"cache": f"sqlite:///{directory}/cache.db"}, every_policy=True)


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each live thread of this process, by the thread's Python name (the loop: MainThread)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    cpu: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            name = names.get(int(task.name), "other")
            cpu[name] = cpu.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return cpu


async def measure(gateway: Gateway, n: int, concurrency: int, tag: str) -> tuple[float, float, dict[str, float]]:
    cpu, wall, threads = time.process_time(), time.perf_counter(), thread_cpu()
    for start in range(0, n, concurrency):
        await asyncio.gather(*(send_chat(gateway, f"{tag}-{i}") for i in range(start, min(n, start + concurrency))))
    await gateway.tasks.drain()  # the background settlements and cache puts are part of the cost
    after = thread_cpu()
    per_thread = {name: (after[name] - threads.get(name, 0.0)) / n * 1000 for name in after}
    return (time.process_time() - cpu) / n * 1000, (time.perf_counter() - wall) / n * 1000, per_thread


async def main(n: int, concurrency: int, repeats: int, port: int, directory: Path) -> None:
    gateways = {"plain": Gateway(config(port, None), env=ENV), "all": Gateway(config(port, directory), env=ENV)}
    for gateway in gateways.values():
        await gateway.start()
        await measure(gateway, 200, concurrency, "warm")
    results: dict[str, list[tuple[float, float, dict[str, float]]]] = {name: [] for name in gateways}
    for r in range(repeats):
        for name, gateway in gateways.items():
            results[name].append(await measure(gateway, n, concurrency, f"{r}"))
    for name, runs in results.items():
        cpu = statistics.median(c for c, _, _ in runs)
        wall = statistics.median(w for _, w, _ in runs)
        print(f"{name:5} c{concurrency}: CPU {cpu:.3f} ms/request, wall {wall:.3f} ms/request (median of {repeats})")
        threads = sorted({t for _, _, per in runs for t in per})
        split = {t: statistics.median(per.get(t, 0.0) for _, _, per in runs) for t in threads}
        print("      by thread (ms/request):", ", ".join(f"{t} {v:.3f}" for t, v in split.items() if v >= 0.005))
    for gateway in gateways.values():
        await gateway.close()


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]] + [2000, 1, 5][len(sys.argv) - 1 :]
    port = int(os.environ.get("UPSTREAM_PORT", "18090"))  # another port when a neighbour holds this one
    body = Path(__file__).parent / "harness" / "chat_body.json"
    upstream = subprocess.Popen(
        [sys.executable, "-c", UPSTREAM, str(body), PATH, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        if upstream.stdout is None or not upstream.stdout.readline().startswith("ready"):
            raise SystemExit("the upstream did not start")
        with tempfile.TemporaryDirectory() as tmp:
            uvloop.run(main(args[0], args[1], args[2], port, Path(tmp)))
    finally:
        upstream.terminate()
        upstream.wait()
