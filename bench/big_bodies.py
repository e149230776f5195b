"""bench/big_bodies.py [--duration 30] [--clients 4] [--mib 16] [--shape words|keys|at-caps|ids] [--loop-cpu]:
does a large body stall the gateway? (not a test)

`--shape` picks the body: `words` (default) one message of `--mib` MiB of random words; `keys` the attacker
review's body of 999,000 distinct keys (12 MB; refused by the member cap since, was 0.5 s of loop CPU to
unpickle); `at-caps` the costliest shape the gateway accepts (every exact cap of `policies/json_body.py` nearly
full, distinct keys and strings); `ids` an embeddings request of 300,000 token ids. `--loop-cpu` starts
nothing: it prints, per shape, the CPU time the event loop itself spends on the body (the inline parse, or
unpickling the parser child's answer), measured in-process.

Starts a tiny upstream (reads the body, answers a fixed chat.completion) and `aigw serve --workers 2` in front of
it, then `--clients` threads post requests of that shape, back to back,
while one more process asks `/healthz` every 20 ms, in turn on `--probe-connections` keep-alive connections (each
worker gets its own share of connections from the kernel, so with one connection a run measured one worker, which
had by chance all, some or none of the big bodies), and records each latency. A
gateway that parses or counts tokens on its event loop answers /healthz late while it does. Prints the
/healthz p50/p99/max, how many big requests went through, and the load average (1 min) before and after: the
machine is shared, so a run means little without it. `--clients 0` measures the same /healthz with no big body
at all, the floor that the machine's own load sets. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import multiprocessing
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

ROOT = Path(__file__).resolve().parents[1]
ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-big",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
)


def upstream(port_out: Any) -> None:
    """An aiohttp server that reads each body in full and answers at once (runs in its own process)."""
    import asyncio

    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")

    async def main() -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port_out.put(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        await asyncio.Event().wait()

    asyncio.run(main())


def healthz(port: int, until: float, connections: int, out: Any) -> None:
    """Latency of GET /healthz every 20 ms until ``until``, on each of ``connections`` in turn (runs in its own
    process, so it never waits on ours)."""
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(connections)]
    latencies = []
    while time.time() < until:
        conn = conns[len(latencies) % len(conns)]
        started = time.perf_counter()
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        latencies.append((time.perf_counter() - started) * 1000)
        time.sleep(0.02)
    out.put(latencies)


def wait_until_serving(port: int) -> None:
    """The socket is bound before the workers have started: wait until each of a few connections is answered."""
    deadline = time.monotonic() + 60
    answered = 0
    while answered < 8 and time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            conn.close()
            answered += 1
        except OSError:
            time.sleep(0.1)


def random_words(mib: int, seed: int) -> str:
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choices(alphabet, k=rng.randint(2, 10))) for _ in range(5000)]
    size = mib * 1024 * 1024
    parts: list[str] = []
    total = 0
    while total < size:
        word = rng.choice(words)
        parts.append(word)
        total += len(word) + 1
    return " ".join(parts)[:size]


SHAPES = ("words", "keys", "at-caps", "ids")


def shaped_body(shape: str, mib: int, seed: int) -> bytes:
    from gateway_core.policies import json_body as caps

    messages = [{"role": "user", "content": "hi"}]
    if shape == "keys":
        members = b"".join(b'"k%d":0,' % i for i in range(999_000))
        return orjson.dumps({"messages": messages})[:-1] + b',"x":{' + members + b'"z":0}}'
    if shape == "ids":  # OpenAI's largest embeddings request: 2,048 inputs, 300,000 token ids in all
        return orjson.dumps({"input": [[i % 50_000 for i in range(146)] for _ in range(2048)]})
    if shape == "at-caps":
        keys, strings = caps.MAX_MEMBERS - 10, caps.MAX_STRINGS - 10
        containers = caps.MAX_CONTAINERS - 10
        numbers = caps.MAX_ELEMENTS - keys - strings - containers - 10
        body = {
            "messages": messages,
            "x_keys": {f"k{i}": 0 for i in range(keys)},
            "x_strings": [f"s{i}" for i in range(strings)],
            "x_arrays": [[] for _ in range(containers)],
            "x_numbers": [i + 0.5 for i in range(numbers)],  # not "n", a field validate checks
        }
        return orjson.dumps(body)
    text = random_words(mib, seed)[: mib * 1024 * 1024 - 200]
    return orjson.dumps({"messages": [{"role": "user", "content": text}]})


def loop_cpu(mib: int) -> None:
    """Per shape, the event loop's CPU for the body: what ValidatePolicy runs on the loop (the byte counts and
    inline parse, or the unpickling of the child's answer), the best of 5, with ``time.thread_time``."""
    import pickle

    from gateway_core.errors import BadRequest
    from gateway_core.policies.json_body import parse_object, within_exact_caps
    from gateway_core.policies.parser_process import LARGE_BODY_BYTES, _result

    for shape in SHAPES:
        raw = shaped_body(shape, mib, 0)
        inline = len(raw) < LARGE_BODY_BYTES and within_exact_caps(raw)
        try:
            reply: tuple[Any, ...] = ("ok", parse_object(raw))
        except BadRequest as exc:
            reply = ("error", exc.message, exc.code, exc.param)
        data = bytearray(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
        best = float("inf")
        for _ in range(5):
            started = time.thread_time()
            with contextlib.suppress(BadRequest):
                parse_object(raw) if inline else _result(data)
            best = min(best, time.thread_time() - started)
        print(
            f"{shape}: {len(raw) / 1e6:.1f} MB, {'inline' if inline else 'child'}, {reply[0]}"
            f"{'' if reply[0] == 'ok' else ' ' + str(reply[2])}: event-loop CPU {best * 1000:.1f} ms"
        )
    print(f"load average {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=30)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--mib", type=int, default=16)
    parser.add_argument("--probe-connections", type=int, default=4)
    parser.add_argument("--shape", choices=SHAPES, default="words")
    parser.add_argument("--loop-cpu", action="store_true")
    args = parser.parse_args()
    if args.loop_cpu:
        loop_cpu(args.mib)
        return
    load_before = os.getloadavg()[0]
    ctx = multiprocessing.get_context("spawn")
    ports: Any = ctx.Queue()
    up = ctx.Process(target=upstream, args=(ports,), daemon=True)
    up.start()
    up_port = ports.get(timeout=30)
    # The JSON envelope takes a few bytes: keep the body just under the 16 MiB limit.
    bodies = [shaped_body(args.shape, args.mib, i) for i in range(args.clients)]
    with tempfile.TemporaryDirectory(prefix="aigw-big-") as work:
        config = {
            "backends": [
                {
                    "name": "up",
                    "url": f"http://127.0.0.1:{up_port}",
                    "auth": {"type": "none"},
                    "deployments": ["gpt-4o"],
                }
            ],
            "keys": [{"name": "bench", "key_env": "BIG_CLIENT_KEY", "user": "bench"}],
            "routing": {"probe": {"enabled": False}},
            "stores": {"health": "memory://"},
        }
        Path(work, "gateway.yaml").write_text(yaml.safe_dump(config))
        log = Path(work, "gw.log")
        env = {**os.environ, "BIG_CLIENT_KEY": "big-key"}
        with log.open("w") as out:
            gateway = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "aigw.cli",
                    "serve",
                    "--config",
                    "gateway.yaml",
                    "--workers",
                    "2",
                    "--port",
                    "0",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=work,
                env=env,
            )
        try:
            deadline = time.monotonic() + 60
            match = None
            while match is None and time.monotonic() < deadline:
                match = re.search(r"listening on http://127.0.0.1:(\d+)", log.read_text())
                time.sleep(0.05)
            if match is None:
                raise RuntimeError(log.read_text())
            port = int(match.group(1))
            wait_until_serving(port)
            until = time.time() + args.duration
            results: Any = ctx.Queue()
            prober = ctx.Process(target=healthz, args=(port, until, args.probe_connections, results))
            prober.start()
            done = [0] * args.clients
            statuses: dict[int, int] = {}

            def poster(i: int) -> None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                headers = {"api-key": "big-key", "content-type": "application/json"}
                while time.time() < until:
                    conn.request(
                        "POST", "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21", bodies[i], headers
                    )
                    response = conn.getresponse()
                    response.read()
                    statuses[response.status] = statuses.get(response.status, 0) + 1
                    done[i] += 1

            threads = [threading.Thread(target=poster, args=(i,)) for i in range(args.clients)]
            for t in threads:
                t.start()
            latencies = sorted(results.get(timeout=args.duration + 120))
            for t in threads:
                t.join()
            prober.join()
        finally:
            gateway.terminate()
            gateway.wait(timeout=30)
            up.terminate()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(
        f"healthz n={len(latencies)} p50_ms={statistics.median(latencies):.1f} p99_ms={p99:.1f} "
        f"max_ms={latencies[-1]:.1f}; big posts ({args.shape}, {args.mib} MiB, {args.clients} clients): {sum(done)} "
        f"statuses={statuses}; {os.cpu_count()} cores; load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
