from __future__ import annotations

from pathlib import Path

import pytest

from gateway_core.config import ConfigError, config_from_dict, load_config, sha256_hex

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = "backends:\n  - name: b1\n    url: http://127.0.0.1:1\n    deployments: [gpt-4o]\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_example_file_is_valid_and_complete() -> None:
    config = load_config(ROOT / "gateway.example.yaml", env={})
    assert [b.name for b in config.backends] == ["aoai-eastus", "aoai-swedencentral", "openai-compatible"]
    assert config.backends[0].deployments[0].upstream_name == "gpt-4o-prod"
    assert config.backends[0].deployments[1].name == "text-embedding-3-small"
    assert config.backends[1].auth.type == "entra"
    assert config.keys[1].admin is True
    assert config.deployment_names() == ["gpt-4o", "gpt-4o-mini", "text-embedding-3-small"]
    assert [r.name for r in config.limits.rules] == ["per-user-tpm", "tenant-monthly", "per-team"]
    assert config.cache.enabled and config.cache.semantic is not None
    assert config.stores.cache is None  # commented out: the environment (COSMOS_ENDPOINT, else SQLite) decides
    assert config.routing.breaker.failures == 5 and config.routing.probe.interval_s == 30


def test_unknown_key_is_named_with_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "    wieght: 3\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    message = str(exc.value)
    assert "backends.0.wieght" in message
    assert f"{path}:5" in message
    assert "Extra inputs are not permitted" in message


@pytest.mark.parametrize(
    ("snippet", "key"),
    [
        ("    url: ftp://x\n", "backends.0.url"),
        ("    priority: -1\n", "backends.0.priority"),
        ("    auth: {type: api_key}\n", "backends.0.auth.key_env"),
        ("    auth: {type: magic}\n", "backends.0.auth"),
        ("    type: bedrock\n", "backends.0.type"),
    ],
)
def test_bad_values_name_their_key(tmp_path: Path, snippet: str, key: str) -> None:
    text = MINIMAL.replace("    url: http://127.0.0.1:1\n", "") if snippet.startswith("    url") else MINIMAL
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text + snippet), env={})
    assert key in str(exc.value)


def test_duplicate_backends_and_bad_key_entries_are_refused() -> None:
    backend = {"name": "b", "url": "http://h", "deployments": ["d"]}
    with pytest.raises(ConfigError, match="backend names must be unique: b"):
        config_from_dict({"backends": [backend, backend]})
    with pytest.raises(ConfigError, match="64 hex digits"):
        config_from_dict({"backends": [backend], "keys": [{"name": "k", "sha256": "abc", "user": "u"}]})
    with pytest.raises(ConfigError, match="exactly one of sha256 or key_env"):
        config_from_dict({"backends": [backend], "keys": [{"name": "k", "user": "u"}]})


def test_not_yaml_and_missing_file_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "backends: [\n"), env={})
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml", env={})
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n"), env={})


def test_zero_config_needs_endpoint_and_key() -> None:
    with pytest.raises(ConfigError, match="AZURE_OPENAI_ENDPOINT"):
        load_config(None, env={})
    with pytest.raises(ConfigError, match="AZURE_OPENAI_API_KEY is not"):
        load_config(None, env={"AZURE_OPENAI_ENDPOINT": "https://x.openai.azure.com"})
    config = load_config(
        None,
        env={
            "AZURE_OPENAI_ENDPOINT": "https://x.openai.azure.com/",
            "AZURE_OPENAI_API_KEY": "k",
            "OPENAI_API_VERSION": "2025-01-01-preview",
            "AIGW_API_KEYS": "one, two,",
        },
    )
    (backend,) = config.backends
    assert backend.url == "https://x.openai.azure.com"
    assert backend.api_version == "2025-01-01-preview"
    assert [d.name for d in backend.deployments] == ["*"]
    assert [k.user for k in config.keys] == [sha256_hex("one")[:8], sha256_hex("two")[:8]]
    assert {k.tenant for k in config.keys} == {"default"}


def test_config_is_frozen() -> None:
    config = load_config(None, env={"AZURE_OPENAI_ENDPOINT": "https://x", "AZURE_OPENAI_API_KEY": "k"})
    with pytest.raises(ValueError, match="frozen"):
        config.backends[0].weight = 5


@pytest.mark.parametrize(
    ("deployment", "key"),
    [
        ({"name": "../x"}, "backends.0.deployments.0.name"),
        ({"name": "gpt-4o?api-version=1"}, "backends.0.deployments.0.name"),
        ({"name": "x" * 65}, "backends.0.deployments.0.name"),
        ({"name": "gpt-4\u043e"}, "backends.0.deployments.0.name"),
        ({"name": "gpt-4o", "backend_name": "prod/../other"}, "backends.0.deployments.0.backend_name"),
        ({"name": "gpt-4o", "backend_name": "prod#x"}, "backends.0.deployments.0.backend_name"),
    ],
)
def test_deployment_names_that_could_shape_a_url_are_refused_at_start(deployment: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match="a deployment name starts with a letter or digit") as exc:
        config_from_dict({"backends": [{"name": "b", "url": "http://h", "deployments": [deployment]}]})
    assert key in str(exc.value)


@pytest.mark.parametrize("version", ["2024-10-21&x=1", "../2024-10-21", "2024-13-01", "v2", ""])
def test_backend_api_version_must_be_a_version(version: str) -> None:
    with pytest.raises(ConfigError, match=r"backends\.0\.api_version: .*YYYY-MM-DD"):
        config_from_dict({"backends": [{"name": "b", "url": "http://h", "api_version": version, "deployments": ["d"]}]})
    with pytest.raises(ConfigError, match="api_version"):
        load_config(
            None,
            env={
                "AZURE_OPENAI_ENDPOINT": "http://h",
                "AZURE_OPENAI_API_KEY": "k",
                "OPENAI_API_VERSION": version or "x",
            },
        )


def test_wildcard_and_ordinary_names_are_accepted() -> None:
    backend = {"name": "b", "url": "http://h", "api_version": "2025-04-01-preview", "deployments": ["*", "gpt-4o.1_x"]}
    config = config_from_dict({"backends": [backend]})
    assert [d.name for d in config.backends[0].deployments] == ["*", "gpt-4o.1_x"]
    assert config.backends[0].simulator is False  # x-aigw-sim-* headers reach no backend unless it says so


def test_semantic_cache_embedding_deployment_is_a_deployment_name() -> None:
    backend = {"name": "b", "url": "http://h", "deployments": ["*"]}
    semantic = {"deployments": ["gpt-4o"], "embedding_deployment": "emb/../x"}
    with pytest.raises(ConfigError, match=r"cache\.semantic\.embedding_deployment"):
        config_from_dict({"backends": [backend], "cache": {"semantic": semantic}})


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://", "names no host"),
        ("http://x:99999", "port"),
        ("http://x:0", "port"),
        ("http://x:abc", "port"),
        ("http://user:secret@x", "credentials"),
        ("http://x/?api-key=secret", "credentials, a query"),
    ],
)
def test_backend_urls_that_cannot_work_are_refused_at_start(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=r"backends\.0\.url") as refused:
        config_from_dict({"backends": [{"name": "b", "url": url, "deployments": ["d"]}]})
    assert fragment in str(refused.value) and "secret" not in str(refused.value)


def test_a_config_file_that_is_not_utf8_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "latin.yaml"
    bad.write_bytes(b"\xff\xfe backends: []\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad, env={})


@pytest.mark.parametrize("value", ["true", "false"])
def test_no_auth_cannot_come_from_a_config_file(tmp_path: Path, value: str) -> None:
    # A field of the model, set only by `aigw serve --no-auth`: a file (or an app setting with inline YAML) that
    # says it would have opened every endpoint to callers without a key.
    path = write(tmp_path, MINIMAL + f"no_auth: {value}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert f"{path}:5: no_auth: not a setting" in str(exc.value)
    with pytest.raises(ConfigError):
        config_from_dict({"backends": [{"name": "b1", "url": "http://127.0.0.1:1"}], "no_auth": True})
