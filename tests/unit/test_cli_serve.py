"""`aigw serve` builds one gateway, and that is the one it serves."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

import aigw.serve
import gateway_core.app
from aigw.cli import main
from tests.servers import write_yaml


def test_serve_builds_one_gateway_and_serves_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[gateway_core.app.Gateway] = []
    served: list[object] = []

    class Counted(gateway_core.app.Gateway):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    def run_gateway(gateway: object, sockets: list[socket.socket], **_: object) -> None:
        # Stands in for uvicorn's blocking loop: records what would be served and releases the port.
        served.append(gateway)
        for sock in sockets:
            sock.close()

    monkeypatch.setattr(gateway_core.app, "Gateway", Counted)
    monkeypatch.setattr(aigw.serve, "run_gateway", run_gateway)
    monkeypatch.setenv("CLI_TEST_CLIENT_KEY", "client-key")
    backend = {"name": "b1", "url": "http://127.0.0.1:9", "auth": {"type": "none"}, "deployments": ["gpt-4o"]}
    keys = [{"name": "k", "key_env": "CLI_TEST_CLIENT_KEY", "user": "alice"}]
    stores = {"counters": "memory://", "cache": "memory://", "health": "memory://"}
    path = write_yaml(tmp_path / "gateway.yaml", {"backends": [backend], "keys": keys, "stores": stores})
    assert main(["serve", "--config", str(path), "--port", "0"]) == 0
    assert len(built) == 1 and served == built
