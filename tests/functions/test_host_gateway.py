"""The Functions host keeps one gateway per process and closes the one it replaces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aigw.functions_host import FunctionsHost
from gateway_core.config import ConfigError
from tests.servers import write_yaml

MEMORY = {"counters": "memory://", "cache": "memory://", "health": "memory://"}


def config(deployment: str) -> dict[str, object]:
    backend = {"name": "b1", "url": "http://127.0.0.1:9", "auth": {"type": "none"}, "deployments": [deployment]}
    keys = [{"name": "k", "key_env": "HOST_TEST_CLIENT_KEY", "user": "alice"}]
    return {"backends": [backend], "keys": keys, "stores": MEMORY, "routing": {"probe": {"enabled": False}}}


@pytest.fixture
def app_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_yaml(tmp_path / "one.yaml", config("gpt-4o"))
    write_yaml(tmp_path / "two.yaml", config("gpt-4o-mini"))
    monkeypatch.setenv("HOST_TEST_CLIENT_KEY", "client-key")
    monkeypatch.setenv("AIGW_CONFIG", "one.yaml")  # relative to the app root, as in the Functions app
    return tmp_path


async def test_one_gateway_is_kept_across_requests(app_root: Path) -> None:
    host = FunctionsHost(app_root)
    try:
        first = await host.gateway()
        assert await host.gateway() is first
        assert first.config.deployment_names() == ["gpt-4o"]
    finally:
        await host.close()
    assert first.closed


async def test_a_changed_config_builds_a_new_gateway_and_closes_the_old(
    app_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = FunctionsHost(app_root)
    try:
        first = await host.gateway()
        monkeypatch.setenv("AIGW_CONFIG", "two.yaml")
        second = await host.gateway()
        assert second is not first and second.config.deployment_names() == ["gpt-4o-mini"]
        assert first.closed and not second.closed
        assert await host.gateway() is second
    finally:
        await host.close()
    assert second.closed


async def test_reload_replaces_the_gateway_and_closes_the_old(app_root: Path) -> None:
    host = FunctionsHost(app_root)
    try:
        first = await host.gateway()
        (app_root / "one.yaml").write_text((app_root / "two.yaml").read_text())
        second = await host.reload()
        assert second is not first and first.closed
        assert await host.gateway() is second and second.config.deployment_names() == ["gpt-4o-mini"]
    finally:
        await host.close()


async def test_a_bad_config_on_reload_keeps_the_running_gateway(app_root: Path) -> None:
    host = FunctionsHost(app_root)
    try:
        first = await host.gateway()
        (app_root / "one.yaml").write_text("backends: []\n")
        with pytest.raises(ConfigError, match="backends"):
            await host.reload()
        assert not first.closed and await host.gateway() is first
    finally:
        await host.close()


FIRST_GATEWAY = """
import asyncio, gc, sys
import subprocess
import sys
from pathlib import Path
from aigw.functions_host import FunctionsHost

async def main() -> None:
    host = FunctionsHost(Path(sys.argv[1]))
    before = gc.get_freeze_count()
    await host.gateway()
    print(before, gc.get_freeze_count())
    await host.close()

asyncio.run(main())
"""


def test_the_first_gateway_of_a_process_freezes_its_startup_objects(app_root: Path) -> None:
    """In a fresh interpreter, as a Functions worker is: the pytest process may have frozen its objects already."""
    done = subprocess.run(
        [sys.executable, "-c", FIRST_GATEWAY, str(app_root)], capture_output=True, text=True, timeout=120, check=True
    )
    before, after = (int(n) for n in done.stdout.split())
    assert before == 0 and after > 0
