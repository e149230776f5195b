"""The templates create what the code expects: Cosmos DB containers and partition keys, the cache's vector path,
the usage tables and queues, the identity's roles, and the app settings the code reads.

In Azure the app's identity has data-plane roles only and cannot create a database or a container, so a name
that drifts here is a store that fails in production and nowhere else.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from gateway_core.storage import cosmos
from gateway_core.storage.factory import cache_store, counter_store, health_store
from gateway_core.storage.ports import CacheEntry
from gateway_core.storage.tables_queue import POISON_QUEUE, QUEUE
from gateway_core.storage.tables_usage import RECORDS_TABLE, SUMMARIES_TABLE
from gateway_core.store_urls import SERVES, CosmosURL, default_url, parse_store_url
from tests.infra.bicep import INFRA, Expr, Loop, Template
from tests.servers import COSMOS_KEY_ENV, ROOT

MAIN = Template(INFRA / "main.bicep")
COSMOS = Template(INFRA / "modules/cosmos.bicep")
STORAGE = Template(INFRA / "modules/storage.bicep")
FUNCTION_APP = Template(INFRA / "modules/functionapp.bicep")

# The usage store's names (tables://, AIGW_USAGE_URL), as its adapter opens them.
USAGE_TABLES = {RECORDS_TABLE, SUMMARIES_TABLE}
USAGE_QUEUES = {QUEUE, POISON_QUEUE}

ROLES = {
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
    "Cognitive Services OpenAI User": "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
}
COSMOS_DATA_CONTRIBUTOR = "00000000-0000-0000-0000-000000000002"
ACCOUNT_ENDPOINT = "https://aigw-cosmos-x.documents.azure.com:443/"  # what documentEndpoint looks like


def containers() -> dict[str, dict[str, Any]]:
    found = {}
    for declaration in COSMOS.resources("Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers"):
        body = declaration.value
        found[body["name"]] = body["properties"]["resource"]
    return found


def app_settings() -> dict[str, Any]:
    settings: dict[str, Any] = FUNCTION_APP.variables()["settings"]
    return settings


def function_app_params() -> dict[str, Any]:
    (module,) = MAIN.modules("modules/functionapp.bicep")
    params: dict[str, Any] = module.value["params"]
    return params


def test_cosmos_containers_are_the_ones_the_adapters_open() -> None:
    url = f"cosmos://{ACCOUNT_ENDPOINT.split('//')[1].rstrip('/')}/aigw?key_env=AIGW_TEST_COSMOS_KEY"
    opened = {
        counter_store(url, COSMOS_KEY_ENV)._container_name,  # type: ignore[attr-defined]
        cache_store(url, COSMOS_KEY_ENV)._container_name,  # type: ignore[attr-defined]
        health_store(url, COSMOS_KEY_ENV)._container_name,  # type: ignore[attr-defined]
    }
    assert opened == {cosmos.COUNTERS_CONTAINER, cosmos.CACHE_CONTAINER, cosmos.HEALTH_CONTAINER}
    assert set(containers()) == opened


def test_cosmos_containers_have_the_adapters_partition_key_and_per_item_ttl() -> None:
    for name, container in containers().items():
        assert container["id"] == name
        assert container["partitionKey"]["paths"] == [cosmos.PARTITION_KEY_PATH], name
        # -1: TTL on with no default, so the `ttl` each counter and cache document carries is honoured.
        assert container["defaultTtl"] == -1, name


def test_the_database_is_the_one_cosmos_endpoint_leads_to() -> None:
    # The app sets only COSMOS_ENDPOINT: every Cosmos DB port's URL, and so the database name, comes from it
    # (usage is not Cosmos DB's: AIGW_USAGE_URL sends it to Table Storage).
    settings = app_settings()
    assert settings["COSMOS_ENDPOINT"] == Expr("cosmosEndpoint")
    assert function_app_params()["cosmosEndpoint"] == Expr("cosmos.outputs.endpoint")
    databases = set()
    for port in SERVES["cosmos"]:
        url = parse_store_url(default_url(port, {"COSMOS_ENDPOINT": ACCOUNT_ENDPOINT}), port)
        assert isinstance(url, CosmosURL)
        assert url.key_env is None  # managed identity: the account has local auth off
        databases.add(url.database)
    (module,) = MAIN.modules("modules/cosmos.bicep")
    assert {module.value["params"]["databaseName"]} == databases


def test_the_cache_container_indexes_vectors_where_the_adapter_stores_them() -> None:
    cache = containers()[cosmos.CACHE_CONTAINER]
    (embedding,) = cache["vectorEmbeddingPolicy"]["vectorEmbeddings"]
    assert embedding["path"] == cosmos.VECTOR_PATH
    assert embedding["dataType"] == "float32"
    # The adapter's fallback ranks by cosine similarity and compares VectorDistance's score the same way.
    assert embedding["distanceFunction"] == "cosine"
    assert embedding["dimensions"] == Expr("embeddingDimensions")
    assert COSMOS.parameters()["embeddingDimensions"] == MAIN.parameters()["embeddingDimensions"] == 1536
    (index,) = cache["indexingPolicy"]["vectorIndexes"]
    assert index["path"] == cosmos.VECTOR_PATH
    assert COSMOS.parameters()["vectorIndexType"] == "quantizedFlat"
    excluded = {p["path"] for p in cache["indexingPolicy"]["excludedPaths"]}
    assert f"{cosmos.VECTOR_PATH}/*" in excluded  # indexed by the vector index, not as ordinary paths


def test_the_account_is_serverless_with_vector_search_and_entra_id_only() -> None:
    (account,) = COSMOS.resources("Microsoft.DocumentDB/databaseAccounts")
    properties = account.value["properties"]
    assert {c["name"] for c in properties["capabilities"]} == {"EnableServerless", "EnableNoSQLVectorSearch"}
    assert properties["disableLocalAuth"] is True


async def test_cache_entries_keep_their_vector_at_the_vector_path(cosmos_address: str) -> None:
    # On the Cosmos DB API server, in a container made as the template makes it (the adapter may not create it):
    # the raw document has the embedding where the container's vector policy looks.
    from azure.cosmos import PartitionKey
    from azure.cosmos.aio import CosmosClient

    url = parse_store_url(f"cosmos://{cosmos_address}/v{uuid.uuid4().hex[:8]}?key_env=K", "cache")
    assert isinstance(url, CosmosURL)
    key = COSMOS_KEY_ENV["AIGW_TEST_COSMOS_KEY"]
    async with CosmosClient(url.endpoint, credential=key) as client:
        database = await client.create_database_if_not_exists(url.database)
        container = await database.create_container_if_not_exists(
            id=cosmos.CACHE_CONTAINER, partition_key=PartitionKey(path=cosmos.PARTITION_KEY_PATH), default_ttl=-1
        )
        store = cosmos.CosmosCache(cosmos.CosmosTarget(url, key))
        try:
            await store.put(CacheEntry("k1", "bucket", b"{}", created_s=1.0, expires_s=4e9, vector=(0.6, 0.8)))
        finally:
            await store.close()
        raw = await container.read_item(item="k1", partition_key="bucket")
    field = cosmos.VECTOR_PATH.removeprefix("/")
    assert "/" not in field
    assert raw[field] == [0.6, 0.8]
    assert raw[cosmos.PARTITION_KEY_PATH.removeprefix("/")] == "bucket"


def test_usage_tables_and_queues_exist_and_the_app_points_at_them() -> None:
    (module,) = MAIN.modules("modules/storage.bicep")
    assert set(module.value["params"]["tables"]) == USAGE_TABLES
    assert set(module.value["params"]["queues"]) == USAGE_QUEUES
    loops = {
        kind: declaration.value
        for kind in ("tables", "queues")
        for declaration in STORAGE.resources(f"Microsoft.Storage/storageAccounts/{kind[:-1]}Services/{kind}")
    }
    assert {kind: (loop.iterable, loop.body["name"]) for kind, loop in loops.items() if isinstance(loop, Loop)} == {
        "tables": (Expr("tables"), Expr("tableName")),
        "queues": (Expr("queues"), Expr("queueName")),
    }
    # tables://<account>: the usage store signs in as the identity against that account's tables and queues.
    assert app_settings()["AIGW_USAGE_URL"] == Expr("usageUrl")
    assert function_app_params()["usageUrl"] == Expr("'tables://${storage.outputs.name}'")
    assert function_app_params()["storageAccountName"] == Expr("storage.outputs.name")


def assigned(template: Template) -> set[str]:
    """Role ids granted by the template's role assignments, each to the identity it was given."""
    granted: set[str] = set()
    for declaration in template.resources("Microsoft.Authorization/roleAssignments"):
        body = declaration.value.body if isinstance(declaration.value, Loop) else declaration.value
        assert body["properties"]["principalId"] in (Expr("identityPrincipalId"), Expr("principalId")), template.path
        assert body["properties"]["principalType"] == "ServicePrincipal"
        granted |= template.guids_behind(declaration.value)
    return granted


def test_the_identity_holds_every_role_the_code_needs() -> None:
    granted: dict[str, set[str]] = {}
    for path in sorted((INFRA / "modules").glob("*.bicep")):
        granted[path.name] = assigned(Template(path))
    assert granted["storage.bicep"] == {
        ROLES["Storage Blob Data Owner"],
        ROLES["Storage Queue Data Contributor"],
        ROLES["Storage Table Data Contributor"],
    }
    assert granted["keyvault.bicep"] == {ROLES["Key Vault Secrets User"]}
    assert granted["openai-role.bicep"] == {ROLES["Cognitive Services OpenAI User"]}
    assert granted["monitoring.bicep"] == {ROLES["Monitoring Metrics Publisher"]}
    # Each module grants to the one identity main.bicep makes.
    for name in ("storage", "keyvault", "monitoring", "cosmos"):
        (module,) = MAIN.modules(f"modules/{name}.bicep")
        assert module.value["params"]["identityPrincipalId"] == Expr("identity.outputs.principalId"), name


def test_cosmos_data_contributor_is_granted_on_the_account() -> None:
    (assignment,) = COSMOS.resources("Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments")
    properties = assignment.value["properties"]
    assert COSMOS.guids_behind(properties["roleDefinitionId"]) == {COSMOS_DATA_CONTRIBUTOR}
    assert properties["principalId"] == Expr("identityPrincipalId")
    assert properties["scope"] == Expr("account.id")


def test_openai_user_is_granted_on_each_backend_in_its_own_resource_group() -> None:
    (module,) = MAIN.modules("modules/openai-role.bicep")
    assert isinstance(module.value, Loop)
    assert module.value.iterable == Expr("openAiBackends")
    assert "backend.resourceGroup" in module.value.body["scope"].text
    assert module.value.body["params"] == {
        "accountName": Expr("backend.name"),
        "principalId": Expr("identity.outputs.principalId"),
    }


def test_every_app_setting_the_code_reads_is_set() -> None:
    settings = app_settings()
    read: set[str] = set()
    for path in (ROOT / "function_app.py", *sorted((ROOT / "aigw").glob("functions_*.py"))):
        read |= set(re.findall(r"\b(?:environ|env)\.get\(\s*\"([A-Za-z_][A-Za-z0-9_]*)\"", path.read_text()))
    assert read >= {"AIGW_CONFIG", "AIGW_HEALTH_CRON"}
    assert read <= set(settings), sorted(read - set(settings))
    # The Functions host's storage by identity (shared keys are off, so no connection string at all).
    assert "AzureWebJobsStorage" not in settings
    assert settings["AzureWebJobsStorage__accountName"] == Expr("storageAccountName")
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    # DefaultAzureCredential (Cosmos DB, Entra backends) and the host pick the user-assigned identity.
    for name in ("AzureWebJobsStorage__clientId", "AZURE_CLIENT_ID", "AIGW_IDENTITY_CLIENT_ID"):
        assert settings[name] == Expr("identityClientId"), name
    assert function_app_params()["identityClientId"] == Expr("identity.outputs.clientId")
    assert settings["APPLICATIONINSIGHTS_CONNECTION_STRING"] == Expr("appInsightsConnectionString")
    assert settings["PYTHON_ENABLE_INIT_INDEXING"] == "1"  # HTTP streaming (README "Azure Functions")
    # Flex Consumption rejects these: the runtime is set in functionAppConfig instead.
    assert not {"FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION", "WEBSITE_RUN_FROM_PACKAGE"} & set(settings)


def test_the_function_app_is_python_311_on_flex_consumption_deployed_by_identity() -> None:
    (plan,) = FUNCTION_APP.resources("Microsoft.Web/serverfarms")
    assert plan.value["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
    (site,) = FUNCTION_APP.resources("Microsoft.Web/sites")
    config = site.value["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"] == {
        "type": "UserAssignedIdentity",
        "userAssignedIdentityResourceId": Expr("identityId"),
    }
    assert site.value["identity"]["type"] == "UserAssigned"
    assert site.value["properties"]["keyVaultReferenceIdentity"] == Expr("identityId")
