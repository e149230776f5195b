"""`aigw serve` freezes a started worker's objects out of the cyclic collector's way (aigw/gc_freeze.py)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.servers import GATEWAY_ENV, eventually, gateway_config, run_aigw, write_yaml

# Imported by every Python process `aigw serve` starts (the supervisor, each spawned worker): a thread watches
# the process's freeze count and, once it is above 0, writes its parent's pid and the count to a file named after
# the process (not at exit: uvicorn ends a process by re-raising SIGTERM, which skips atexit).
SITECUSTOMIZE = """
import gc, os, threading, time
def _report():
    for _ in range(2400):
        if gc.get_freeze_count() > 0:
            part = os.path.join({directory!r}, f"{{os.getpid()}}.part")
            with open(part, "w") as out:
                out.write(f"{{os.getppid()}} {{gc.get_freeze_count()}}")
            os.rename(part, part[:-5])
            return
        time.sleep(0.05)
threading.Thread(target=_report, daemon=True).start()
"""


def _frozen(reports: Path) -> dict[int, tuple[int, ...]]:
    """Frozen processes by pid: (parent pid, freeze count)."""
    return {int(f.name): tuple(int(v) for v in f.read_text().split()) for f in reports.glob("[0-9]*[0-9]")}


@pytest.mark.parametrize("workers", [1, 2])
def test_each_serving_process_has_frozen_its_startup_objects(sim_url: str, tmp_path: Path, workers: int) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(directory=str(reports)))
    path = write_yaml(tmp_path / "gateway.yaml", gateway_config(sim_url))
    pythonpath = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    env = {**GATEWAY_ENV, "PYTHONPATH": pythonpath}
    with run_aigw(["serve", "--config", str(path), "--workers", str(workers)], env=env) as gateway:
        assert httpx.get(gateway.url + "/healthz", timeout=60).status_code == 200
        supervisor = gateway.process.pid

        # With one worker the supervisor serves; with more, each worker it started.
        def serving_and_frozen() -> list[int]:
            found = _frozen(reports)
            if workers == 1:
                return [supervisor] if supervisor in found else []
            return [pid for pid, (parent, _) in found.items() if parent == supervisor]

        eventually(lambda: len(serving_and_frozen()) == workers, patience_s=60)
