"""Store URLs are checked once, when the config is loaded: the key (or variable), file and line, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway_core import store_urls as urls
from gateway_core.config import ConfigError, config_from_dict, load_config
from gateway_core.storage import factory
from gateway_core.store_urls import CosmosURL, MemoryURL, SqliteURL, parse_store_url

MINIMAL = "backends:\n  - name: b1\n    url: http://127.0.0.1:1\n    deployments: [gpt-4o]\n"
BACKEND = {"name": "b1", "url": "http://127.0.0.1:1", "deployments": ["gpt-4o"]}

BAD_URLS = [
    ("redis://localhost:6379", "unknown store scheme 'redis'"),
    ("/var/lib/aigw/cache.db", "not a store URL"),
    ("memory://anything", "takes nothing after the scheme"),
    ("sqlite://cache.db", "bad SQLite URL"),
    ("sqlite:///", "bad SQLite URL"),
    ("sqlite:///state/", "names a directory"),
    ("sqlite:///cache.db?mode=ro", "no query options"),
    ("cosmos:///aigw", "no host"),
    ("cosmos://account", "name one database"),
    ("cosmos://account:443/", "name one database"),
    ("cosmos://account/a/b", "name one database"),
    ("cosmos://account:99999/aigw", "port"),
    ("cosmos://account/aigw?keyenv=COSMOS_KEY", "unknown option keyenv"),
    ("cosmos://account/aigw?key_env=not-a-name", "key_env must name an environment variable"),
    ("cosmos://account/aigw?scheme=ftp", "scheme must be http or https"),
]


@pytest.mark.parametrize(("url", "problem"), BAD_URLS)
def test_a_bad_store_url_stops_loading_with_key_file_and_line(tmp_path: Path, url: str, problem: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(MINIMAL + f"stores:\n  counters: memory://\n  cache: '{url}'\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    message = str(exc.value)
    assert f"{path}:7: stores.cache:" in message
    assert problem in message


def test_good_store_urls_parse_to_what_the_adapters_open() -> None:
    assert parse_store_url("memory://", "counters") == MemoryURL()
    assert parse_store_url("sqlite:///.aigw/c.db", "cache") == SqliteURL(Path(".aigw/c.db"))
    assert parse_store_url("sqlite:////var/lib/aigw/c.db", "cache") == SqliteURL(Path("/var/lib/aigw/c.db"))
    assert parse_store_url("cosmos://acct.documents.azure.com:443/aigw?key_env=K", "health") == CosmosURL(
        "https://acct.documents.azure.com:443/", "aigw", "K"
    )
    assert parse_store_url("cosmos://127.0.0.1:8081/db?scheme=http", "health") == CosmosURL(
        "http://127.0.0.1:8081/", "db", None
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"AIGW_COUNTERS_URL": "sqlite://no-slash.db"}, "AIGW_COUNTERS_URL"),
        ({"AIGW_HEALTH_URL": "redis://x"}, "AIGW_HEALTH_URL"),
        ({"COSMOS_ENDPOINT": "https:///"}, "COSMOS_ENDPOINT"),
    ],
)
def test_a_bad_store_url_from_the_environment_names_the_variable(
    tmp_path: Path, env: dict[str, str], variable: str
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(MINIMAL, encoding="utf-8")
    with pytest.raises(ConfigError, match=f"environment variable {variable}"):
        load_config(path, env=env)
    # A URL set in the file wins over the environment, so the variable is not consulted then.
    port = next((p for p in urls.PORTS if urls.ENV_URL[p] == variable), None)
    if port is not None:
        path.write_text(MINIMAL + f"stores:\n  {port}: memory://\n", encoding="utf-8")
        load_config(path, env=env)


def test_good_store_urls_from_the_environment_are_used() -> None:
    env = {"AIGW_CACHE_URL": "memory://", "COSMOS_ENDPOINT": "https://acct.documents.azure.com:443/"}
    assert factory.default_url("cache", env) == "memory://"
    assert factory.default_url("counters", env) == "cosmos://acct.documents.azure.com:443/aigw"
    assert factory.default_url("health", {}) == "sqlite:///.aigw/health.db"
    # Cosmos DB does not serve usage: the Functions app's COSMOS_ENDPOINT leaves usage on its own default.
    assert factory.default_url("usage", env) == "sqlite:///.aigw/usage.db"
    assert factory.default_url("usage", {"AIGW_USAGE_URL": "memory://"}) == "memory://"


def test_cosmos_does_not_serve_usage() -> None:
    with pytest.raises(ConfigError, match=r"stores\.usage: .*cosmos:// does not serve the usage store"):
        config_from_dict({"backends": [BACKEND], "stores": {"usage": "cosmos://h:1/db"}})


def test_the_factory_refuses_what_the_config_refuses_with_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"stores\.counters: unknown store scheme 'redis'"):
        factory.counter_store("redis://x")
    with pytest.raises(ConfigError, match=r"stores\.health: .*environment variable NO_SUCH_KEY is not set"):
        factory.health_store("cosmos://127.0.0.1:9/aigw?key_env=NO_SUCH_KEY", {})


def test_the_factory_tables_serve_exactly_the_ports_the_grammar_lists() -> None:
    tables: dict[str, set[str]] = {
        "counters": set(factory.COUNTERS),
        "cache": set(factory.CACHES),
        "health": set(factory.HEALTH),
        "usage": set(factory.USAGE),
    }
    for port, schemes in tables.items():
        assert schemes == {scheme for scheme, ports in urls.SERVES.items() if port in ports}, port


def test_a_backend_that_serves_only_some_ports_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    # As a future tables:// (usage only) would be: listed for some ports, refused for the others.
    monkeypatch.setitem(urls.SERVES, "sqlite", ("counters",))
    config_from_dict({"backends": [BACKEND], "stores": {"counters": "sqlite:///c.db"}})
    with pytest.raises(ConfigError, match=r"stores\.cache: .*sqlite:// does not serve the cache store"):
        config_from_dict({"backends": [BACKEND], "stores": {"cache": "sqlite:///c.db"}})


def test_semantic_cache_deployments_must_be_served() -> None:
    semantic = {"deployments": ["gpt-4o"], "embedding_deployment": "text-embedding-3-small"}
    with pytest.raises(ConfigError, match=r"cache\.semantic\.embedding_deployment: no backend serves text-emb"):
        config_from_dict({"backends": [BACKEND], "cache": {"enabled": True, "semantic": semantic}})
