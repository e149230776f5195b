"""bench/chaos.py [--duration 300] [--concurrency 16] [--schedule fixed|random --seed 1 --phase-s 10]:
client-visible errors while regions fail (not a test).

Starts three `aigw simulate` regions (eastus and westeurope at priority 1, southindia at priority 2) and
`aigw serve --workers 2` in front of them, then sends chat requests for the whole duration while flipping
regions between healthy, throttled (429 with Retry-After), failing (500/503), dropping connections and slow
through each simulator's /++/config, always leaving at least one region healthy that did not ask for a wait in
the phase before. ``--schedule fixed`` repeats the hand-written PHASES; ``random`` draws a seeded schedule
(``random_phases``). The same load, at a quarter of the concurrency, also goes straight to the primary region,
the way a client without the gateway would call it. Every simulated client paces itself (at most one request
per 25 ms), so fast failures do not dominate counts. Prints error rates and latency for both, errors per phase,
and the errors aigw answered while a backend was left untried (fewer attempts than regions): with a healthy
region in every phase, each of those is the gateway giving up too early. Everything listens on 127.0.0.1 and
stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[1]
REGIONS = (("eastus", 1), ("westeurope", 1), ("southindia", 2))
# (seconds, {region: faults}); the schedule repeats. Every phase leaves at least one region healthy, and that
# region did not answer 429 in the phase before: aigw honours Retry-After, so a region that asked for a wait
# seconds ago is not available yet, however healthy the schedule says it is now (seen in the first runs).
PHASES: list[tuple[float, dict[str, list[dict[str, Any]]]]] = [
    (20, {}),
    (20, {"eastus": [{"kind": "429", "retry_after_s": 5}]}),
    (20, {"eastus": [{"kind": "500"}]}),
    (20, {"eastus": [{"kind": "drop"}], "westeurope": [{"kind": "429", "retry_after_s": 3}]}),
    (20, {"westeurope": [{"kind": "503", "retry_after_s": 2}], "eastus": [{"kind": "429", "retry_after_s": 4}]}),
    (20, {"eastus": [{"kind": "429", "rate": 0.5, "retry_after_s": 1}], "westeurope": [{"kind": "500", "rate": 0.3}]}),
    (20, {"eastus": [{"kind": "500"}], "westeurope": [{"kind": "500"}]}),
]
FAULT_KINDS = ("healthy", "429", "500", "503", "drop", "slow")
PHASE = [0]  # the phase in force, for attributing errors
ERRORS_BY_PHASE: collections.Counter[tuple[str, int]] = collections.Counter()
REQUESTS_BY_PHASE: collections.Counter[tuple[str, int]] = collections.Counter()
UNTRIED: collections.Counter[int] = collections.Counter()  # aigw errors with a backend left untried, by phase
SAMPLES: list[str] = []  # a few error answers seen through aigw
GATEWAY = [""]  # aigw's address, to tell its results from the direct ones
PACE_S = 0.025  # each simulated client sends at most one request per 25 ms
BODY = {"messages": [{"role": "user", "content": "chaos"}], "max_tokens": 8}


def random_phases(seed: int, count: int, phase_s: float) -> list[tuple[float, dict[str, list[dict[str, Any]]]]]:
    """A seeded schedule: each phase, one region healthy (never one that answered 429 in the phase before, as
    it asked for a wait), each other one healthy, 429, 500, 503, dropping or slow, sometimes only for a share
    of its requests. ``phase_s`` should exceed the longest Retry-After (5 s), so only the last phase's waits
    can still be running."""
    rng = random.Random(seed)
    regions = [name for name, _ in REGIONS]
    phases: list[tuple[float, dict[str, list[dict[str, Any]]]]] = []
    asked_to_wait: set[str] = set()
    for _ in range(count):
        healthy = rng.choice([r for r in regions if r not in asked_to_wait])
        faults: dict[str, list[dict[str, Any]]] = {}
        for region in regions:
            kind = "healthy" if region == healthy else rng.choice(FAULT_KINDS)
            if kind == "healthy":
                continue
            fault: dict[str, Any] = {"kind": kind}
            if kind in ("429", "503"):
                fault["retry_after_s"] = rng.choice((1, 2, 3, 5))
            if kind == "slow":
                fault["extra_latency_ms"] = rng.choice((300, 1000, 2500))
            if rng.random() < 0.3:
                fault["rate"] = rng.choice((0.3, 0.5))
            faults[region] = [fault]
        asked_to_wait = {r for r, f in faults.items() if f[0]["kind"] == "429"}
        phases.append((phase_s, faults))
    return phases


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def start(args: list[str], cwd: str, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """Start `aigw ARGS` with its output in a log file (a pipe nobody reads would fill and stall it)."""
    log = Path(cwd, f"{args[0]}-{len(list(Path(cwd).glob('*.log')))}.log")
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "aigw.cli", *args, "--port", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
            env=env,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(r"listening on (http://\S+)", log.read_text())
        if match:
            return process, match.group(1)
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"aigw {args[0]} did not start: {log.read_text()[-2000:]}")


async def load(
    url: str, headers: dict[str, str], concurrency: int, until: float, results: list[tuple[int, float]]
) -> None:
    endpoint = url.split("/openai")[0]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            while time.monotonic() < until:
                started, phase = time.monotonic(), PHASE[0]
                attempts = None
                try:
                    async with session.post(
                        url, json=BODY, headers=headers, timeout=aiohttp.ClientTimeout(total=30)
                    ) as r:
                        body = await r.read()
                        status = r.status
                        attempts = r.headers.get("x-aigw-attempts")
                except (aiohttp.ClientError, TimeoutError):
                    status = 0  # connection error: the client saw no answer at all
                elapsed = time.monotonic() - started
                results.append((status, elapsed * 1000))
                REQUESTS_BY_PHASE[(endpoint, phase)] += 1
                if status != 200:
                    ERRORS_BY_PHASE[(endpoint, phase)] += 1
                    if endpoint == GATEWAY[0] and status:
                        if len(SAMPLES) < 5:
                            SAMPLES.append(f"{status} attempts={attempts} {body[:200]!r}")
                        # A healthy region was in every phase: fewer tries than regions (in one phase) left it
                        # untried.
                        if (attempts is None or int(attempts) < len(REGIONS)) and PHASE[0] == phase:
                            UNTRIED[phase] += 1
                # A client that paces itself like a real one: an instant error is not retried in a hot loop,
                # so error rates compare requests, not how fast each path can fail.
                await asyncio.sleep(max(0.0, PACE_S - elapsed))

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def chaos(
    sims: dict[str, str],
    until: float,
    log: list[str],
    phases: list[tuple[float, dict[str, list[dict[str, Any]]]]],
) -> None:
    async with aiohttp.ClientSession() as session:
        i = 0
        while time.monotonic() < until:
            seconds, faults = phases[i % len(phases)]
            PHASE[0] = i
            for region, url in sims.items():
                async with session.post(url + "/++/config", json={"faults": faults.get(region, [])}) as r:
                    if r.status != 200:
                        raise RuntimeError(f"simulator {region} refused faults {faults.get(region)}: {r.status}")
            log.append(f"{time.strftime('%H:%M:%S')} phase {i}: {faults or 'all healthy'}")
            await asyncio.sleep(min(seconds, max(0.0, until - time.monotonic())))
            i += 1


def summary(name: str, results: list[tuple[int, float]]) -> str:
    errors = [s for s, _ in results if s != 200]
    latencies = sorted(ms for _, ms in results)

    def p(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    kinds = {s: errors.count(s) for s in sorted(set(errors))}
    return (
        f"| {name} | {len(results):,} | {len(errors):,} | {100 * len(errors) / max(1, len(results)):.3f}% | "
        f"{statistics.median(latencies):.1f} | {p(0.99):.1f} | {kinds or '-'} |"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--schedule", choices=("fixed", "random"), default="fixed")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--phase-s", type=float, default=10.0)
    args = parser.parse_args()
    phases = PHASES
    if args.schedule == "random":
        phases = random_phases(args.seed, max(1, int(args.duration // args.phase_s) + 1), args.phase_s)
    with tempfile.TemporaryDirectory() as work:
        env = {**os.environ, "CHAOS_BACKEND_KEY": "chaos-backend", "CHAOS_CLIENT_KEY": "chaos-aigw-client"}
        processes = []
        sims: dict[str, str] = {}
        try:
            for region, _ in REGIONS:
                config = write_yaml(
                    Path(work, f"{region}.yaml"), {"api_key": "chaos-backend", "region": region, "ttft_ms": 20}
                )
                process, url = start(["simulate", "--config", str(config)], work, env)
                processes.append(process)
                sims[region] = url
            gateway_yaml = write_yaml(
                Path(work, "gateway.yaml"),
                {
                    "backends": [
                        {
                            "name": region,
                            "url": sims[region],
                            "region": region,
                            "priority": priority,
                            "auth": {"type": "api_key", "key_env": "CHAOS_BACKEND_KEY"},
                            "deployments": ["gpt-4o"],
                        }
                        for region, priority in REGIONS
                    ],
                    "keys": [{"name": "chaos", "key_env": "CHAOS_CLIENT_KEY", "user": "chaos"}],
                    "routing": {
                        "max_attempts": 3,
                        "budget_s": 20,
                        "breaker": {"failures": 5, "interval_s": 10, "trip_s": 10},
                        "probe": {"interval_s": 5},
                    },
                },
            )
            process, gateway = start(["serve", "--config", str(gateway_yaml), "--workers", "2"], work, env)
            processes.append(process)
            GATEWAY[0] = gateway
            until = time.monotonic() + args.duration
            via: list[tuple[int, float]] = []
            direct: list[tuple[int, float]] = []
            log: list[str] = []
            path = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
            await asyncio.gather(
                chaos(sims, until, log, phases),
                load(gateway + path, {"api-key": "chaos-aigw-client"}, args.concurrency, until, via),
                load(sims["eastus"] + path, {"api-key": "chaos-backend"}, max(1, args.concurrency // 4), until, direct),
            )
            report(log, args, via, direct)
            print_errors(Path(work, "serve-3.log"))
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()


def print_errors(log: Path) -> None:
    errors = [line for line in log.read_text().splitlines() if "ERROR" in line]
    if errors:
        print(f"\ngateway log: {len(errors)} error lines, e.g.:\n" + "\n".join(errors[:5]))


def report(
    log: list[str], args: argparse.Namespace, via: list[tuple[int, float]], direct: list[tuple[int, float]]
) -> None:
    print("\n".join(log))
    schedule = "fixed" if args.schedule == "fixed" else f"random, seed {args.seed}, {args.phase_s:g} s phases"
    print(
        f"\nchaos run: {args.duration:.0f} s, {args.concurrency} concurrent clients through aigw "
        f"(--workers 2, 3 regions), schedule {schedule}\n"
    )
    print("| path | requests | errors | error rate | p50 ms | p99 ms | error statuses |")
    print("|---|---:|---:|---:|---:|---:|---|")
    print(summary("through aigw", via))
    print(summary("straight to the primary (eastus)", direct))
    print("\nsample errors through aigw:\n  " + "\n  ".join(SAMPLES))
    print("\nerrors through aigw by phase (requests, errors, errors with a backend left untried):")
    for (endpoint, phase), requests in sorted(REQUESTS_BY_PHASE.items()):
        if endpoint == GATEWAY[0]:
            errors = ERRORS_BY_PHASE[(endpoint, phase)]
            print(f"  phase {phase}: {requests:,} requests, {errors} errors, {UNTRIED[phase]} untried")
    print(f"\nerrors answered while a backend was left untried: {sum(UNTRIED.values())}")


if __name__ == "__main__":
    asyncio.run(main())
