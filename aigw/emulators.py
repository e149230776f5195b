"""`aigw serve --demo --azure-emulators`: the demo on the local Azure stack.

Azurite (Blob, Queue, Table on 127.0.0.1:10000-10002, the well-known development account, data under
``.aigw/azurite``) and the Cosmos DB API server (127.0.0.1:8081, HTTPS with a self-signed certificate, data in
memory) run as child processes from the project's own npm tools (``npm ci`` first if they are missing), each in
its own process group: the terminal's Ctrl+C reaches only aigw, which stops them after the gateway has closed
(its last usage records written). Ports can be moved with ``AIGW_AZURITE_BLOB_PORT``, ``AIGW_AZURITE_QUEUE_PORT``,
``AIGW_AZURITE_TABLE_PORT`` and ``AIGW_COSMOS_PORT`` (tests use free ones).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout: package.json and node_modules
ACCOUNT = "devstoreaccount1"
# The Azure Storage and Cosmos DB emulators' published development keys (not secrets: every emulator has them).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
COSMOS_KEY = "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="
AZURITE_ENV = "AIGW_DEMO_AZURITE"  # the connection string, for the tables:// URL's connection_env
COSMOS_KEY_ENV = "AIGW_DEMO_COSMOS_KEY"
_READY_S = 90.0  # a first start on a cold, shared box (Azurite loads its tables from disk)


class EmulatorError(RuntimeError):
    """The emulators cannot start here (a port taken, npm missing, a child exited): the message says why."""


def _port(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise EmulatorError(f"{name}={value!r} is not a port number")
    return int(value)


@dataclass
class AzureEmulators:
    location: Path = field(default_factory=lambda: Path(".aigw") / "azurite")
    blob_port: int = field(default_factory=lambda: _port("AIGW_AZURITE_BLOB_PORT", 10000))
    queue_port: int = field(default_factory=lambda: _port("AIGW_AZURITE_QUEUE_PORT", 10001))
    table_port: int = field(default_factory=lambda: _port("AIGW_AZURITE_TABLE_PORT", 10002))
    cosmos_port: int = field(default_factory=lambda: _port("AIGW_COSMOS_PORT", 8081))
    _children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.blob_port}/{ACCOUNT};"
            f"QueueEndpoint=http://127.0.0.1:{self.queue_port}/{ACCOUNT};"
            f"TableEndpoint=http://127.0.0.1:{self.table_port}/{ACCOUNT};"
        )

    @property
    def cosmos_endpoint(self) -> str:
        return f"https://127.0.0.1:{self.cosmos_port}/"

    def store_urls(self) -> dict[str, str]:
        """The demo's ``stores``: Cosmos DB for counters, cache and health; Table Storage (+ queue) for usage."""
        cosmos = f"cosmos://127.0.0.1:{self.cosmos_port}/aigw?key_env={COSMOS_KEY_ENV}&create_if_missing=true"
        tables = f"tables://?connection_env={AZURITE_ENV}&create_if_missing=true"
        return {"counters": cosmos, "cache": cosmos, "health": cosmos, "usage": tables}

    def start(self) -> None:
        """Check the ports, install the tools if missing, start both, return once every port answers."""
        ports = {
            "Azurite Blob": self.blob_port,
            "Azurite Queue": self.queue_port,
            "Azurite Table": self.table_port,
            "the Cosmos DB API server": self.cosmos_port,
        }
        for what, port in ports.items():
            _check_free(what, port)
        self._install()
        self.location.mkdir(parents=True, exist_ok=True)
        bin_dir = ROOT / "node_modules" / ".bin"
        azurite = [
            str(bin_dir / "azurite"),
            *("--silent", "--skipApiVersionCheck", "--loose", "--disableTelemetry"),
            *("--location", str(self.location)),
            *("--blobHost", "127.0.0.1", "--blobPort", str(self.blob_port)),
            *("--queueHost", "127.0.0.1", "--queuePort", str(self.queue_port)),
            *("--tableHost", "127.0.0.1", "--tablePort", str(self.table_port)),
        ]
        cosmos = [str(bin_dir / "cosmosdb-server"), "-p", str(self.cosmos_port), "--host", "127.0.0.1"]
        os.environ[AZURITE_ENV] = self.connection_string
        os.environ[COSMOS_KEY_ENV] = COSMOS_KEY
        try:
            for command in (azurite, cosmos):
                # Own process group: Ctrl+C in the terminal reaches aigw only, which stops them in order.
                self._children.append(
                    subprocess.Popen(
                        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
                    )
                )
            self._wait_ready(list(ports.items()))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM each child's process group (Azurite saves its data), SIGKILL what is left after 20 s."""
        for child in self._children:
            _signal_group(child, signal.SIGTERM)
        for child in self._children:
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _signal_group(child, signal.SIGKILL)
                child.wait()
        self._children.clear()

    def pids(self) -> list[int]:
        return [child.pid for child in self._children]

    def _install(self) -> None:
        bin_dir = ROOT / "node_modules" / ".bin"
        if (bin_dir / "azurite").exists() and (bin_dir / "cosmosdb-server").exists():
            return
        if not (ROOT / "package.json").exists():
            raise EmulatorError(f"the emulators come from the project's npm tools: no package.json in {ROOT}")
        print("aigw: installing Azurite and the Cosmos DB API server (npm ci) ...", flush=True)
        try:
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=ROOT, check=True)
            subprocess.run(["node", "scripts/patch-cosmosdb-server.cjs"], cwd=ROOT, check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise EmulatorError(f"npm ci failed (Node.js and npm are needed for the emulators): {exc}") from exc

    def _wait_ready(self, ports: list[tuple[str, int]]) -> None:
        deadline = time.monotonic() + _READY_S
        for what, port in ports:
            while not _answers(port):
                for child in self._children:
                    if child.poll() is not None:
                        raise EmulatorError(f"{what} did not start: its process exited with {child.returncode}")
                if time.monotonic() > deadline:
                    raise EmulatorError(f"{what} did not answer on 127.0.0.1:{port} within {_READY_S:.0f} s")
                time.sleep(0.1)  # polling a port another process opens: there is no event to wait on


def _check_free(what: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise EmulatorError(f"cannot start {what} on 127.0.0.1:{port}: {exc.strerror}") from exc


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _signal_group(child: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, sig)  # the child leads its own group (start_new_session)


def banner_lines(emulators: AzureEmulators) -> str:
    return f"""
Local Azure stack (stopped with aigw):
  Azurite (data in {emulators.location}/): tables aigwusage (records) and aigwsummaries (cost summaries),
          queue aigw-usage (one message per written batch, summarised in-process as the queue trigger does)
    connection string: {emulators.connection_string}
  Cosmos DB API server (data in memory): database aigw (counters, cache, health)
    endpoint: {emulators.cosmos_endpoint}  (self-signed certificate)
    key: {COSMOS_KEY}
"""
