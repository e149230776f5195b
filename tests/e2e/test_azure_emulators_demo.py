"""`aigw serve --demo --azure-emulators`: the demo on Azurite and the Cosmos DB API server, started and stopped
by aigw itself (on free ports here, through the port overrides)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from aigw.demo import DEMO_KEY


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def emulator_env(ports: list[int]) -> dict[str, str]:
    names = ("AIGW_AZURITE_BLOB_PORT", "AIGW_AZURITE_QUEUE_PORT", "AIGW_AZURITE_TABLE_PORT", "AIGW_COSMOS_PORT")
    return {**os.environ, **dict(zip(names, map(str, ports), strict=True))}


def process_groups() -> dict[int, int]:
    """pid -> process group of every process on the machine (from /proc)."""
    groups = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            groups[int(entry.name)] = int(fields[2])
    return groups


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def test_the_demo_on_the_emulators_serves_records_in_azurite_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    from azure.data.tables import TableClient

    ports = free_ports(4)
    process = subprocess.Popen(
        [sys.executable, "-m", "aigw.cli", "serve", "--demo", "--azure-emulators", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=emulator_env(ports),
        cwd=tmp_path,
        start_new_session=True,  # its own group, as a terminal's foreground job: Ctrl+C signals the group
    )
    assert process.stdout is not None
    output: list[str] = []
    for line in process.stdout:
        output.append(line)
        if line.startswith("Press Ctrl+C"):
            break
    text = "".join(output)
    drain = threading.Thread(target=lambda: output.extend(process.stdout or []), daemon=True)
    drain.start()
    try:
        url = re.search(r"gateway: (http://\S+)", text)
        connection = re.search(r"connection string: (\S+)", text)
        assert url and connection and f"https://127.0.0.1:{ports[3]}/" in text, text
        children = children_of(process.pid)
        assert len(children) == 2, children  # Azurite and the Cosmos DB API server
        response = httpx.post(
            f"{url.group(1)}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
            headers={"api-key": DEMO_KEY},
            json={"messages": [{"role": "user", "content": "Hello"}]},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        request_id = response.headers["x-request-id"]
        # The writer flushes every second in the background: the row appears in Azurite's table soon after.
        with TableClient.from_connection_string(connection.group(1), "aigwusage") as table:
            deadline = time.monotonic() + 60
            while not any(e.get("request_id") == request_id for e in table.list_entities()):
                assert time.monotonic() < deadline, "no usage row in aigwusage"
                time.sleep(0.2)  # another process writes it: nothing here to wait on but the table
        # Its batch went through the Storage queue to the in-process summariser: a summary row for the demo user.
        with TableClient.from_connection_string(connection.group(1), "aigwsummaries") as summaries:
            deadline = time.monotonic() + 60
            while not any(e["RowKey"].startswith("demo|demo|") for e in summaries.list_entities()):
                assert time.monotonic() < deadline, "no summary row in aigwsummaries"
                time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl+C in a terminal does
        code = process.wait(timeout=60)
        drain.join(timeout=5)
    assert code == 0 and "Traceback" not in "".join(output), "".join(output)
    groups = process_groups()
    assert not [pid for pid, group in groups.items() if group in children], "an emulator outlived aigw"


def test_a_taken_emulator_port_is_a_clear_error(tmp_path: Path) -> None:
    ports = free_ports(4)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports[3]))
        taken.listen()
        result = subprocess.run(
            [sys.executable, "-m", "aigw.cli", "serve", "--demo", "--azure-emulators", "--port", "0"],
            capture_output=True,
            text=True,
            env=emulator_env(ports),
            cwd=tmp_path,
            timeout=60,
        )
    assert result.returncode == 2
    assert f"cannot start the Cosmos DB API server on 127.0.0.1:{ports[3]}" in result.stderr
    assert "Traceback" not in result.stderr
