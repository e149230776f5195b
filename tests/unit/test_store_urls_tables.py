"""``tables://`` URLs (usage only): the account with managed identity or a connection string from a variable,
and Table Storage as the usage default where the Functions app's storage account is configured."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway_core.config import ConfigError, config_from_dict, load_config
from gateway_core.storage import factory
from gateway_core.store_urls import TablesURL, parse_store_url

BACKEND = {"name": "b1", "url": "http://127.0.0.1:1", "deployments": ["gpt-4o"]}
MINIMAL = "backends:\n  - name: b1\n    url: http://127.0.0.1:1\n    deployments: [gpt-4o]\n"


def test_the_forms_parse() -> None:
    assert parse_store_url("tables://aigwstore", "usage") == TablesURL("aigwstore", None)
    assert parse_store_url("tables://?connection_env=AzureWebJobsStorage", "usage") == TablesURL(
        None, "AzureWebJobsStorage"
    )
    assert parse_store_url("tables://?connection_env=V&create_if_missing=true&prefix=staging", "usage") == TablesURL(
        None, "V", True, "staging"
    )
    assert parse_store_url("tables://acct?create_if_missing=false", "usage") == TablesURL("acct", None, False)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("tables://", "name an account"),
        ("tables://acct?connection_env=V", "not both"),
        ("tables://Acct", "3 to 24 lowercase letters and digits"),
        ("tables://ab", "3 to 24 lowercase letters and digits"),
        ("tables://acct.table.core.windows.net", "3 to 24 lowercase letters and digits"),
        ("tables://acct:10002", "3 to 24 lowercase letters and digits"),
        ("tables://acct/aigw", "use tables://account or tables://?connection_env=VAR"),
        ("tables://?connection_env=not-a-name", "connection_env must name an environment variable"),
        ("tables://acct?create_if_missing=yes", "create_if_missing must be true or false"),
        ("tables://acct?prefix=Staging", "prefix is a lowercase letter"),
        ("tables://acct?prefix=1x", "prefix is a lowercase letter"),
        ("tables://acct?key=abc", "unknown option key"),
    ],
)
def test_a_bad_tables_url_stops_loading_with_the_key(tmp_path: Path, url: str, problem: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(MINIMAL + f"stores:\n  usage: '{url}'\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert f"{path}:6: stores.usage:" in str(exc.value)
    assert problem in str(exc.value)


@pytest.mark.parametrize("port", ["counters", "cache", "health"])
def test_tables_serves_usage_only(port: str) -> None:
    with pytest.raises(ConfigError, match=rf"stores\.{port}: .*tables:// does not serve the {port} store"):
        config_from_dict({"backends": [BACKEND], "stores": {port: "tables://acct"}})


def test_the_functions_storage_account_is_the_usage_default() -> None:
    dev = {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}
    assert factory.default_url("usage", dev) == "tables://?connection_env=AzureWebJobsStorage&create_if_missing=true"
    real = {"AzureWebJobsStorage": "DefaultEndpointsProtocol=https;AccountName=prod;AccountKey=x;"}
    assert factory.default_url("usage", real) == "tables://?connection_env=AzureWebJobsStorage"
    identity = {"AzureWebJobsStorage__accountName": "aigwprod"}
    assert factory.default_url("usage", identity) == "tables://aigwprod"
    # AIGW_USAGE_URL wins; the other ports never default to Table Storage.
    assert factory.default_url("usage", {**identity, "AIGW_USAGE_URL": "memory://"}) == "memory://"
    assert factory.default_url("counters", identity) == "sqlite:///.aigw/counters.db"
    assert factory.default_url("usage", {}) == "sqlite:///.aigw/usage.db"


def test_a_bad_account_setting_names_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(MINIMAL, encoding="utf-8")
    with pytest.raises(ConfigError, match="environment variable AzureWebJobsStorage__accountName"):
        load_config(path, env={"AzureWebJobsStorage__accountName": "Not An Account"})


def test_a_missing_connection_string_variable_is_named() -> None:
    with pytest.raises(ConfigError, match=r"stores\.usage: .*environment variable NO_SUCH_VAR is not set"):
        factory.usage_store("tables://?connection_env=NO_SUCH_VAR", {})
    with pytest.raises(ConfigError, match=r"stores\.usage: .*environment variable NO_SUCH_VAR is not set"):
        factory.usage_queue("tables://?connection_env=NO_SUCH_VAR", {})
