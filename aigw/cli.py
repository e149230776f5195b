"""The `aigw` command: serve the gateway, or run the Azure OpenAI simulator."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway_core.config import ConfigError, GatewayConfig, load_config

from . import usage_cli

if TYPE_CHECKING:
    from .emulators import AzureEmulators


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aigw", description="An AI gateway for Azure OpenAI.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway (ASGI, uvicorn) on embedded defaults")
    serve.add_argument("--config", help="YAML config file (default: $AIGW_CONFIG, else zero-config from env)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=7071)
    serve.add_argument("--workers", type=_positive, default=1)
    serve.add_argument("--demo", action="store_true", help="front two simulated regional backends, with demo keys")
    serve.add_argument(
        "--azure-emulators",
        action="store_true",
        help="with --demo: start Azurite and the Cosmos DB API server and keep the demo's state in them",
    )
    serve.add_argument("--no-auth", action="store_true", help="accept every caller as the anonymous user")
    serve.add_argument("--log-level", default="warning")

    usage_cli.add_parser(sub)

    simulate = sub.add_parser("simulate", help="run the Azure OpenAI simulator")
    simulate.add_argument("--config", help="simulator YAML (latency, deployments, faults)")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=8000)
    simulate.add_argument("--api-key", help="require this key from callers (default: any)")
    simulate.add_argument("--ttft-ms", type=float, help="time to first token, ms")
    simulate.add_argument("--tokens-per-s", type=float, help="streaming speed, tokens per second")
    simulate.add_argument("--log-level", default="warning")

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "warning").upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "usage":
            return usage_cli.run(args)
        return _simulate(args)
    except ConfigError as exc:
        print(f"aigw: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl+C while the emulators start: they were stopped on the way out
        return 130


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return number


def _serve(args: argparse.Namespace) -> int:
    if not args.azure_emulators:
        return _serve_with(args, None)
    from .emulators import AzureEmulators, EmulatorError

    if not args.demo:
        print("aigw: --azure-emulators goes with --demo", file=sys.stderr)
        return 2
    # SIGTERM while the emulators start (or before uvicorn takes the signal over) still stops them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        emulators = AzureEmulators()
        emulators.start()
    except EmulatorError as exc:
        print(f"aigw: {exc}", file=sys.stderr)
        return 2
    try:
        return _serve_with(args, emulators)
    finally:
        emulators.stop()  # after the gateway closed: its last usage records are in Azurite


def _serve_with(args: argparse.Namespace, emulators: AzureEmulators | None) -> int:
    from gateway_core.app import Gateway

    from .serve import BackgroundServers, bind_workers, run_gateway

    servers: BackgroundServers | None = None
    if args.demo:
        from .demo import banner, start_demo_backends

        servers = BackgroundServers()
        config: GatewayConfig = start_demo_backends(servers, emulators.store_urls() if emulators else None)
    else:
        config = load_config(args.config or os.environ.get("AIGW_CONFIG") or None)
    if args.no_auth:
        config = config.model_copy(update={"no_auth": True})
    # The one gateway of this process; building it checks everything that needs the environment (client keys,
    # backend credentials, stores) before binding.
    gateway = Gateway(config, background_probes=True)
    try:
        sockets = bind_workers(args.host, args.port, args.workers)
    except OSError as exc:
        asyncio.run(gateway.close())
        print(f"aigw: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 2
    url = f"http://{args.host}:{sockets[0].getsockname()[1]}"
    if args.demo:
        from .emulators import banner_lines

        print(banner(url, config, banner_lines(emulators) if emulators else ""), flush=True)
    else:
        print(f"aigw gateway listening on {url} ({args.workers} worker{'s' if args.workers > 1 else ''})", flush=True)
    try:
        run_gateway(gateway, sockets, workers=args.workers, log_level=args.log_level)
    except KeyboardInterrupt:
        pass  # Ctrl+C: uvicorn has already shut down gracefully (records flushed); re-raised, it printed a traceback
    finally:
        if servers is not None:
            servers.stop()
    return 0


def _simulate(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway_core.simulator.app import SimulatorApp
    from gateway_core.simulator.settings import load_sim_config

    from .serve import bind

    sim = load_sim_config(args.config)
    updates = {
        k: v
        for k, v in {"api_key": args.api_key, "ttft_ms": args.ttft_ms, "tokens_per_s": args.tokens_per_s}.items()
        if v is not None
    }
    sim = sim.model_copy(update=updates)
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        print(f"aigw: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"aigw simulator listening on http://{args.host}:{sock.getsockname()[1]}", flush=True)
    server = uvicorn.Server(
        uvicorn.Config(
            SimulatorApp(sim),
            loop="uvloop",
            http="httptools",
            lifespan="off",
            log_level=args.log_level,
            access_log=False,
            server_header=False,
        )
    )
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
