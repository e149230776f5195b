"""The files around the templates: azd's azure.yaml, the example parameters, local settings for `func start`,
host.json and .funcignore (what `func azure functionapp publish` and azd upload)."""

from __future__ import annotations

import fnmatch
import json
import re
from datetime import timedelta
from typing import Any

import yaml

from gateway_core.config import load_config
from tests.infra.bicep import INFRA, Expr, Loop, Template
from tests.servers import ROOT

MAIN = Template(INFRA / "main.bicep")
FUNCTION_APP = Template(INFRA / "modules/functionapp.bicep")
FRONT_END_LIMIT_S = 230  # Azure's HTTP front end ends a request that has sent nothing for this long


def test_azure_yaml_publishes_the_app_to_the_site_tagged_for_it() -> None:
    config = yaml.safe_load((ROOT / "azure.yaml").read_text())
    assert config["infra"] == {"provider": "bicep", "path": "infra", "module": "main"}
    assert config["services"] == {"api": {"project": ".", "language": "python", "host": "function"}}
    (site,) = FUNCTION_APP.resources("Microsoft.Web/sites")
    assert "'azd-service-name': 'api'" in site.value["tags"].text


def test_example_parameters_name_only_parameters_main_declares() -> None:
    document = json.loads((INFRA / "main.parameters.example.json").read_text())
    given: dict[str, Any] = {name: p["value"] for name, p in document["parameters"].items()}
    declared = MAIN.parameters()
    assert set(given) <= set(declared), sorted(set(given) - set(declared))
    required = {name for name, default in declared.items() if default is None}
    assert required <= set(given)
    for backend in given["openAiBackends"]:
        assert {"name", "resourceGroup", "endpoint", "region", "deployments"} <= set(backend)
    assert set(given["keyVaultSecrets"]) and all(re.fullmatch(r"[A-Z_][A-Z0-9_]*", k) for k in given["keyVaultSecrets"])


def test_local_settings_example_runs_on_azurite_and_the_cosmos_emulator() -> None:
    values = json.loads((ROOT / "local.settings.json.example").read_text())["Values"]
    assert values["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert values["COSMOS_ENDPOINT"].startswith("https://localhost:8081")
    assert values["COSMOS_KEY"]  # the emulator's published well-known key
    settings = FUNCTION_APP.variables()["settings"]
    for name in ("AIGW_CONFIG", "AIGW_HEALTH_CRON", "PYTHON_ENABLE_INIT_INDEXING"):
        assert name in values and name in settings
    assert "local.settings.json" in (ROOT / ".gitignore").read_text().split()


def test_host_json_lets_the_function_outlive_the_front_end_limit() -> None:
    # The front end's 230 s is an idle limit on the connection; a stream that keeps sending outlives it, and the
    # work after the response (settlement, cache write) runs inside the invocation: the function timeout must
    # not cut either short.
    host = json.loads((ROOT / "host.json").read_text())
    hours, minutes, seconds = (int(part) for part in host["functionTimeout"].split(":"))
    assert timedelta(hours=hours, minutes=minutes, seconds=seconds).total_seconds() > FRONT_END_LIMIT_S
    assert host["extensions"]["http"]["routePrefix"] == ""


def test_funcignore_keeps_what_the_app_runs() -> None:
    patterns = [
        line.strip() for line in (ROOT / ".funcignore").read_text().splitlines() if line.strip() and line[0] != "#"
    ]
    for needed in ("function_app.py", "host.json", "requirements.txt", "gateway_core", "aigw", "gateway.yaml"):
        assert not any(fnmatch.fnmatch(needed, pattern) for pattern in patterns), needed
    for heavy in (".venv", "node_modules", "tests", ".venv-checkov"):
        assert any(fnmatch.fnmatch(heavy, pattern) for pattern in patterns), heavy


def test_the_gateway_backends_output_is_a_valid_gateway_config(tmp_path) -> None:
    # The output, computed for the example parameters, loads as the gateway's `backends:`, each calling as the
    # identity whose client id the app settings carry.
    (output,) = (d for d in MAIN.declarations if d.kind == "output" and d.name == "gatewayBackends")
    assert isinstance(output.value, Loop) and output.value.iterable == Expr("openAiBackends")
    example = json.loads((INFRA / "main.parameters.example.json").read_text())["parameters"]["openAiBackends"]["value"]

    def evaluate(value: Any, backend: dict[str, Any]) -> Any:
        if isinstance(value, Expr):
            item, _, field = value.text.partition(".")
            assert item == output.value.item and field in backend, value
            return backend[field]
        if isinstance(value, dict):
            return {key: evaluate(item, backend) for key, item in value.items()}
        return value

    entries = [evaluate(output.value.body, backend) for backend in example]
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"backends": entries}))
    config = load_config(path, env={"AIGW_IDENTITY_CLIENT_ID": "00000000-0000-0000-0000-000000000001"})
    assert [(b.name, b.url, b.region) for b in config.backends] == [
        (b["name"], b["endpoint"], b["region"]) for b in example
    ]
    assert {b.auth.type for b in config.backends} == {"entra"}
    env_names = {getattr(b.auth, "managed_identity_client_id_env", None) for b in config.backends}
    assert env_names <= set(FUNCTION_APP.variables()["settings"])
