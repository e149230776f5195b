"""`aigw serve --workers N` as processes: who may listen on its port, and what is left when its supervisor dies."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson

from tests.servers import CLIENT_KEY, GATEWAY_ENV, gateway_config, run_aigw, write_yaml

WAIT_S = 60  # generous: each worker imports the gateway before it serves, on a shared 2-core machine
CHAT = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as children:
            found.extend(int(child) for child in children.read().split())
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan is reaped by whoever adopts it, maybe not at once)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_a_second_serve_on_a_port_in_use_exits_2_and_names_the_port(sim_url: str, tmp_path: Path) -> None:
    """With a SO_REUSEPORT socket per worker, a second gateway joined the port and took half the connections."""
    path = write_yaml(tmp_path / "gateway.yaml", gateway_config(sim_url))
    with run_aigw(["serve", "--config", str(path), "--workers", "2"], env=GATEWAY_ENV) as first:
        port = first.url.rsplit(":", 1)[1]
        second = subprocess.Popen(
            [sys.executable, "-m", "aigw.cli", "serve", "--config", str(path), "--workers", "2", "--port", port],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **GATEWAY_ENV},
            cwd=tmp_path,
        )
        try:
            out, err = second.communicate(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            second.terminate()  # not SIGKILL: its workers would live on
            out, err = second.communicate(timeout=WAIT_S)
            raise AssertionError(f"the second gateway is serving on port {port}: {out}") from None
        assert second.returncode == 2
        assert f"cannot listen on 127.0.0.1:{port}" in err and "in use" in err
        assert "Traceback" not in err
        assert httpx.get(first.url + "/healthz", timeout=WAIT_S).status_code == 200  # the first one is untouched


def test_killing_the_supervisor_leaves_no_worker_serving(sim_url: str, tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "gateway.yaml", gateway_config(sim_url))
    with run_aigw(["serve", "--config", str(path), "--workers", "2"], env=GATEWAY_ENV) as gateway:
        supervisor = gateway.process.pid
        _wait_for(lambda: len(_children(supervisor)) >= 2, "two workers")
        workers = _children(supervisor)
        assert httpx.get(gateway.url + "/healthz", timeout=WAIT_S).status_code == 200
        os.kill(supervisor, signal.SIGKILL)
        gateway.process.wait(timeout=WAIT_S)
        try:
            _wait_for(lambda: not any(_running(pid) for pid in workers), "the workers to exit")
        finally:
            for pid in workers:  # the old code's orphans, so a failure leaves nothing behind
                if _running(pid):
                    os.kill(pid, signal.SIGKILL)
        host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
        with socket.socket() as probe:
            assert probe.connect_ex((host, int(port))) != 0  # nobody listens on the port any more


def test_the_parser_child_holds_no_descriptor_but_its_socket(sim_url: str, tmp_path: Path) -> None:
    """uvloop's spawn handed the child the worker's listening socket (and the supervisor's pipes)."""
    path = write_yaml(tmp_path / "gateway.yaml", gateway_config(sim_url))
    content = "word " * (300 * 1024)  # 1.5 MiB: parsed in the child
    body = orjson.dumps({"messages": [{"role": "user", "content": content}], "max_tokens": 1})
    for workers in ("1", "2"):
        with run_aigw(["serve", "--config", str(path), "--workers", workers], env=GATEWAY_ENV) as gateway:
            response = httpx.post(
                gateway.url + CHAT,
                content=body,
                headers={"api-key": CLIENT_KEY, "content-type": "application/json"},
                timeout=WAIT_S,
            )
            assert response.status_code == 200
            parsers = [pid for pid in _descendants(gateway.process.pid) if _is_parser(pid)]
            assert len(parsers) == 1
            fds = {fd: os.readlink(f"/proc/{parsers[0]}/fd/{fd}") for fd in os.listdir(f"/proc/{parsers[0]}/fd")}
            others = {fd: target for fd, target in fds.items() if int(fd) > 2}
            assert len(others) == 1 and next(iter(others.values())).startswith("socket:"), (workers, fds)


def _descendants(pid: int) -> list[int]:
    found = _children(pid)
    for child in list(found):
        found.extend(_descendants(child))
    return found


def _is_parser(pid: int) -> bool:
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        return b"parser_process" in cmdline.read()
