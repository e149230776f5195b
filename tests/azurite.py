"""Azurite (npm ``azurite``, the Azure Storage emulator) on free loopback ports, on disk under ``location``.

``restart()`` stops it and starts it again on the same ports and the same ``--location``: the data stays, and
clients holding the connection string reconnect by themselves.
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.servers import ROOT

_LISTENING = re.compile(r"Azurite (Blob|Queue|Table) service is successfully listening at http://127\.0\.0\.1:(\d+)")
_SERVICES = ("Blob", "Queue", "Table")


def dev_account_key() -> str:
    """The development account's well-known key, from the SDK (typed by hand, a typo gives 403)."""
    from azure.data.tables._base_client import _DEV_CONN_STRING

    return _DEV_CONN_STRING.split("AccountKey=")[1].split(";")[0]


class Azurite:
    def __init__(self, location: Path) -> None:
        self.location = location
        self.ports: dict[str, int] = {name: 0 for name in _SERVICES}  # 0: any free port, until the first start
        self._process: subprocess.Popen[str] | None = None
        self._drain: threading.Thread | None = None

    @property
    def connection_string(self) -> str:
        account = "devstoreaccount1"
        endpoints = ";".join(
            f"{name}Endpoint=http://127.0.0.1:{self.ports[name]}/{account}" for name in ("Table", "Queue", "Blob")
        )
        return f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={dev_account_key()};{endpoints};"

    def start(self) -> None:
        """Start it and return once all three services said they listen (their sockets are bound)."""
        binary = ROOT / "node_modules" / ".bin" / "azurite"
        if not binary.exists():
            raise RuntimeError("Azurite is not installed: run scripts/test (it runs npm ci)")
        host_args = [arg for name in _SERVICES for arg in (f"--{name.lower()}Host", "127.0.0.1")]
        port_args = [arg for name in _SERVICES for arg in (f"--{name.lower()}Port", str(self.ports[name]))]
        quiet = ["--silent", "--skipApiVersionCheck", "--loose", "--disableTelemetry"]
        process = subprocess.Popen(
            [str(binary), *quiet, "--location", str(self.location), *host_args, *port_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None
        output, listening = [], {}
        for line in process.stdout:
            output.append(line)
            match = _LISTENING.search(line)
            if match:
                listening[match.group(1)] = int(match.group(2))
                if len(listening) == len(_SERVICES):
                    break
        if len(listening) < len(_SERVICES):
            process.kill()
            process.wait()
            raise RuntimeError("Azurite did not start:\n" + "".join(output))
        self.ports = listening
        self._process = process
        self._drain = threading.Thread(target=lambda: [None for _ in process.stdout or []], daemon=True)
        self._drain.start()

    def stop(self) -> None:
        """SIGTERM: Azurite saves its data to ``location`` and exits."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._drain is not None:
            self._drain.join(timeout=5)
        self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@contextmanager
def run_azurite(location: Path) -> Iterator[Azurite]:
    azurite = Azurite(location)
    azurite.start()
    try:
        yield azurite
    finally:
        azurite.stop()
