"""The Functions app's settings: AIGW_CONFIG as a path or inline YAML, the waits Azure's front end allows, logs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import yaml

from aigw.functions_host import FunctionsHost
from aigw.functions_settings import MAX_WAIT_S, config_from_app_settings, is_inline_yaml
from gateway_core.config import ConfigError, load_config
from tests.functions.test_function_app import body_of, starlette_request
from tests.servers import BACKEND_KEY, CLIENT_KEY, GATEWAY_ENV, gateway_config, write_yaml

BACKEND = {"name": "b1", "url": "http://127.0.0.1:9", "auth": {"type": "none"}, "deployments": ["gpt-4o"]}
MEMORY = {"counters": "memory://", "cache": "memory://", "health": "memory://"}


@pytest.fixture(autouse=True)
def client_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIGW_API_KEYS", CLIENT_KEY)  # a gateway needs one client key to start


@pytest.mark.parametrize(
    ("setting", "inline"),
    [
        ("gateway.yaml", False),
        ("config/gateway.yaml", False),
        ("/home/site/wwwroot/gateway.yaml", False),
        ("C:\\home\\site\\wwwroot\\gateway.yaml", False),
        ("backends.yaml", False),
        ("", False),
        ("backends:\n  - name: b1\n", True),
        ("{backends: [{name: b1}]}", True),
        ("  {backends: []}", True),
        ("backends: [{name: b1, url: 'http://x', deployments: [gpt-4o]}]", True),
        ("routing: {budget_s: 30}", True),
    ],
)
def test_aigw_config_is_a_path_or_the_yaml_itself(setting: str, inline: bool) -> None:
    assert is_inline_yaml(setting) is inline


@pytest.mark.parametrize(
    "text",
    [
        yaml.safe_dump({"backends": [BACKEND], "stores": MEMORY}),  # block style, several lines
        orjson.dumps({"backends": [BACKEND], "stores": MEMORY}).decode(),  # JSON is flow-style YAML
        "backends: [{name: b1, url: 'http://127.0.0.1:9', auth: {type: none}, deployments: [gpt-4o]}]",
    ],
)
def test_inline_yaml_in_aigw_config_is_the_config(tmp_path: Path, text: str) -> None:
    config = config_from_app_settings(tmp_path, {"AIGW_CONFIG": text})
    assert config.deployment_names() == ["gpt-4o"] and config.backends[0].name == "b1"


def test_a_bad_inline_config_is_named_with_its_line(tmp_path: Path) -> None:
    text = yaml.safe_dump({"backends": [{**BACKEND, "url": "ftp://x"}]}, sort_keys=False)
    with pytest.raises(ConfigError, match=r"AIGW_CONFIG \(inline YAML\):3: backends\.0\.url: must start with http"):
        config_from_app_settings(tmp_path, {"AIGW_CONFIG": text})
    with pytest.raises(ConfigError, match=r"AIGW_CONFIG \(inline YAML\): the top level must be a mapping"):
        config_from_app_settings(tmp_path, {"AIGW_CONFIG": "- backends\n- keys\n"})


def test_a_relative_path_is_read_from_the_app_root(tmp_path: Path) -> None:
    write_yaml(tmp_path / "gateway.yaml", {"backends": [BACKEND]})
    assert config_from_app_settings(tmp_path, {"AIGW_CONFIG": "gateway.yaml"}).backends[0].name == "b1"


def test_on_functions_the_default_spill_dir_is_under_the_temp_dir_not_the_read_only_app(tmp_path: Path) -> None:
    import tempfile

    write_yaml(tmp_path / "gateway.yaml", {"backends": [BACKEND]})
    config = config_from_app_settings(tmp_path, {"AIGW_CONFIG": "gateway.yaml"})
    assert Path(config.usage.spill_dir) == Path(tempfile.gettempdir()) / "aigw" / ".aigw" / "usage-spill"
    absolute = str(tmp_path / "spill")
    write_yaml(tmp_path / "gateway.yaml", {"backends": [BACKEND], "usage": {"spill_dir": absolute}})
    assert config_from_app_settings(tmp_path, {"AIGW_CONFIG": "gateway.yaml"}).usage.spill_dir == absolute


async def test_changed_inline_yaml_builds_a_new_gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIGW_CONFIG", yaml.safe_dump({"backends": [BACKEND], "stores": MEMORY}))
    host = FunctionsHost(tmp_path)
    try:
        first = await host.gateway()
        other = {**BACKEND, "deployments": ["gpt-4o-mini"]}
        monkeypatch.setenv("AIGW_CONFIG", yaml.safe_dump({"backends": [other], "stores": MEMORY}))
        second = await host.gateway()
        assert second is not first and first.closed and second.config.deployment_names() == ["gpt-4o-mini"]
    finally:
        await host.close()


class Collect(logging.Handler):
    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def warnings_logged() -> Iterator[list[logging.LogRecord]]:
    handler = Collect(logging.WARNING)
    logger = logging.getLogger("aigw")
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


async def test_on_functions_backend_waits_default_below_the_front_ends_230_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, warnings_logged: list[logging.LogRecord]
) -> None:
    write_yaml(tmp_path / "gateway.yaml", {"backends": [BACKEND], "stores": MEMORY})
    monkeypatch.setenv("AIGW_CONFIG", "gateway.yaml")
    host = FunctionsHost(tmp_path)
    try:
        config = (await host.gateway()).config  # what the HTTP trigger routes with
    finally:
        await host.close()
    assert config.backends[0].timeout_s == MAX_WAIT_S == 220
    assert config.routing.budget_s == 60  # the default is already below
    assert not warnings_logged
    # `aigw serve` has no such front end: the same file keeps the usual default there.
    assert load_config(tmp_path / "gateway.yaml", env={}).backends[0].timeout_s == 300


def test_on_functions_larger_waits_set_in_the_config_are_capped_with_a_warning(
    tmp_path: Path, warnings_logged: list[logging.LogRecord]
) -> None:
    slow = {**BACKEND, "name": "slow", "timeout_s": 600}
    quick = {**BACKEND, "name": "quick", "timeout_s": 100}
    text = yaml.safe_dump({"backends": [slow, quick], "routing": {"budget_s": 400}, "stores": MEMORY})
    config = config_from_app_settings(tmp_path, {"AIGW_CONFIG": text})
    assert [b.timeout_s for b in config.backends] == [220, 100]
    assert config.routing.budget_s == 220
    messages = [r.getMessage() for r in warnings_logged]
    assert len(messages) == 2
    assert messages[0].startswith("backends[slow].timeout_s is 600 s: capped to 220 s on Azure Functions")
    assert messages[1].startswith("routing.budget_s is 400 s: capped to 220 s on Azure Functions")
    assert all("should stream" in m for m in messages)


async def test_the_gateway_logs_at_info_to_the_hosts_handler_without_secrets(
    sim_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import function_app  # configures logging at import, as the worker does when it loads the app

    assert logging.getLogger("aigw").getEffectiveLevel() == logging.INFO
    assert logging.getLogger("azure").getEffectiveLevel() == logging.WARNING  # the SDKs log each request at INFO
    handler = Collect(logging.NOTSET)  # as the worker's handler on the root logger
    logging.getLogger().addHandler(handler)
    monkeypatch.setenv("AIGW_CONFIG", str(write_yaml(tmp_path / "gateway.yaml", gateway_config(sim_url))))
    for name, value in GATEWAY_ENV.items():
        monkeypatch.setenv(name, value)
    wrong_key = "sk-not-a-real-key-0123456789"
    try:
        refused = await function_app.host.handle(
            starlette_request("POST", "/v1/chat/completions", b"{}", {"api-key": wrong_key})
        )
        assert refused.status_code == 401
        body = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
        answered = await function_app.host.handle(
            starlette_request("POST", "/v1/chat/completions", body, {"api-key": CLIENT_KEY})
        )
        await body_of(answered)
    finally:
        logging.getLogger().removeHandler(handler)
        await function_app.host.close()
    logged = [(r.name, r.levelno, r.getMessage()) for r in handler.records]
    assert any(name == "aigw" and level == logging.INFO and "refused: 401" in m for name, level, m in logged)
    text = "\n".join(m for _, _, m in logged)
    for secret in (wrong_key, CLIENT_KEY, BACKEND_KEY):
        assert secret not in text
