"""The Functions app on the local Azure stack, configured as in Azure by app settings only: Cosmos DB
(``COSMOS_ENDPOINT``) for counters, cache and health, and the app's storage account (``AzureWebJobsStorage``,
Azurite) for usage records, their queue and the summaries. Every trigger is invoked in-process with the
binding's own request type."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.requests import Request

from gateway_core.config import UsageSettings
from gateway_core.usage.summariser import BatchNotFound
from tests.azurite import Azurite, run_azurite
from tests.functions.test_function_app import body_of, starlette_request, use_config
from tests.servers import CLIENT_KEY, COSMOS_KEY_ENV, GATEWAY_ENV, gateway_config


@pytest.fixture(scope="module")
def own_azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """An Azurite of this module's own: the app uses the default names (aigwusage, aigw-usage), no prefix."""
    with run_azurite(tmp_path_factory.mktemp("azurite-functions")) as running:
        yield running


@pytest.fixture
async def azure_app(
    functions: dict[str, Any],
    sim_url: str,
    cosmos_address: str,
    own_azurite: Azurite,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Any]:
    import function_app

    for name, value in GATEWAY_ENV.items():
        monkeypatch.setenv(name, value)
    down = {"name": "down", "url": "http://127.0.0.1:9", "auth": {"type": "none"}, "deployments": ["gpt-4o"]}
    config = gateway_config(sim_url, cache={"enabled": True}, usage={"enabled": True, "sweep_older_than_s": 0})
    config.pop("stores")
    config["backends"] = [{**down, "priority": 0}, {**config["backends"][0], "priority": 1}]
    config["routing"] = {"breaker": {"failures": 1}}
    config["limits"] = {"rules": [{"name": "q", "key": "user", "token_quota": 300, "quota_period": "daily"}]}
    use_config(monkeypatch, tmp_path / "gateway.yaml", config)
    monkeypatch.setenv("COSMOS_ENDPOINT", f"https://{cosmos_address}/")
    monkeypatch.setenv("COSMOS_KEY", COSMOS_KEY_ENV["AIGW_TEST_COSMOS_KEY"])
    monkeypatch.setenv("COSMOS_DATABASE", f"az{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("COSMOS_CREATE_IF_MISSING", "true")
    monkeypatch.setenv("AzureWebJobsStorage", own_azurite.connection_string)
    monkeypatch.delenv("AIGW_USAGE_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # SQLite, if it were used instead, would write ./.aigw/ here
    yield function_app
    await function_app.host.close()


def chat(text: str, *, stream: bool = False) -> Request:
    payload: dict[str, Any] = {"messages": [{"role": "user", "content": text}], "temperature": 0, "max_tokens": 30}
    if stream:
        payload["stream"] = True
    body = orjson.dumps(payload)
    return starlette_request("POST", "/openai/deployments/gpt-4o/chat/completions", body, {"api-key": CLIENT_KEY})


def table_rows(azurite: Azurite, table: str) -> list[dict[str, Any]]:
    from azure.data.tables import TableClient

    with TableClient.from_connection_string(azurite.connection_string, table) as client:
        return [dict(entity) for entity in client.list_entities()]


def take_messages(azurite: Azurite) -> list[Any]:
    """Every message on aigw-usage, received (and deleted) as the Functions runtime would, as the binding's
    ``func.QueueMessage`` with the runtime's base64 decoding done."""
    import azure.functions as func
    from azure.storage.queue import QueueClient

    out = []
    with QueueClient.from_connection_string(azurite.connection_string, "aigw-usage") as client:
        for message in client.receive_messages(messages_per_page=32, visibility_timeout=60):
            body = base64.b64decode(message.content)
            out.append(func.QueueMessage(id=message.id, body=body, pop_receipt=message.pop_receipt))
            client.delete_message(message)
    return out


def alice_requests(azurite: Azurite) -> int:
    """Requests summed over alice's summary rows (one per deployment and model)."""
    rows = [r for r in table_rows(azurite, "aigwsummaries") if r["RowKey"].startswith("contoso|alice|")]
    return sum(int(getattr(r["requests"], "value", r["requests"])) for r in rows)


def usage_rows_of(azurite: Azurite, request_ids: set[str]) -> list[dict[str, Any]]:
    return [r for r in table_rows(azurite, "aigwusage") if r.get("request_id") in request_ids]


async def test_usage_limits_cache_and_health_on_azurite_and_cosmos(
    functions: dict[str, Any], azure_app: Any, own_azurite: Azurite
) -> None:
    from azure.functions.timer import TimerRequest

    http = functions["gateway"].get_user_function()
    gateway = await azure_app.host.gateway()
    assert gateway.usage_runtime is not None
    # The timer trigger finds the first backend down; the health store tells the HTTP trigger (one attempt).
    await functions["health"].get_user_function()(TimerRequest(past_due=False))
    first = await http(chat("cache me"))
    assert first.status_code == 200 and first.headers["x-aigw-cache"] == "MISS"
    assert first.headers["x-aigw-backend"] == "sim-east" and first.headers["x-aigw-attempts"] == "1"
    # The record was written before the invocation returned: in the table, nothing buffered, one message.
    assert gateway.usage_runtime.writer.buffered_records == 0
    ids = {first.headers["x-request-id"]}
    assert len(usage_rows_of(own_azurite, ids)) == 1
    await body_of(first)
    await gateway.tasks.drain()  # the cache write and the limit settlement run after the answer
    again = await http(chat("cache me"))
    assert again.status_code == 200 and again.headers["x-aigw-cache"] == "HIT", await body_of(again)
    ids.add(again.headers["x-request-id"])
    # A streamed answer is recorded at its end, and written before the stream (the invocation) is over.
    streamed = await http(chat("stream me", stream=True))
    assert streamed.status_code == 200
    assert (await body_of(streamed)).rstrip().endswith(b"data: [DONE]")
    ids.add(streamed.headers["x-request-id"])
    assert gateway.usage_runtime.writer.buffered_records == 0
    rows = usage_rows_of(own_azurite, ids)
    assert len(rows) == 3 and {r["tenant"] for r in rows} == {"contoso"}

    # The queue trigger, given each message as the runtime hands it over, writes the summary rows.
    messages = take_messages(own_azurite)
    assert len(messages) == 3, [m.get_body() for m in messages]
    for message in messages:
        await functions["usage_summary"].get_user_function()(message)
    assert alice_requests(own_azurite) == 3
    # Delivered twice (the runtime may): counted once.
    await functions["usage_summary"].get_user_function()(messages[0])
    assert alice_requests(own_azurite) == 3

    # The daily token quota, counted in Cosmos DB, refuses at last.
    statuses = []
    for n in range(12):
        response = await http(chat(f"question {n}"))
        await body_of(response)
        await gateway.tasks.drain()
        statuses.append(response.status_code)
        if response.status_code != 200:
            break
    assert statuses[0] == 200 and statuses[-1] == 403, statuses
    # Their messages lost: the sweep timer summarises the pending batches.
    assert take_messages(own_azurite)
    await functions["usage_sweep"].get_user_function()(TimerRequest(past_due=False))
    assert alice_requests(own_azurite) == 3 + len(statuses)


async def test_forged_queue_messages(functions: dict[str, Any], azure_app: Any) -> None:
    import azure.functions as func

    summary = functions["usage_summary"].get_user_function()
    # No such batch (yet): raised, so the runtime delivers it again and then poisons it.
    with pytest.raises(BatchNotFound):
        await summary(func.QueueMessage(id="1", body=uuid.uuid4().hex.encode()))
    # Not a batch id (garbage, bad UTF-8, a 64 KiB string, a trailing newline): completed, nothing retried.
    for body in (b"../../etc/passwd", b"\xff\xfe", b"a" * 65536, b"abc\n"):
        await summary(func.QueueMessage(id="2", body=body))


def test_queue_and_timer_bindings(functions: dict[str, Any]) -> None:
    queue = orjson.loads(functions["usage_summary"].get_raw_bindings()[0])
    assert queue["type"] == "queueTrigger" and queue["queueName"] == "aigw-usage"
    assert queue["connection"] == "AzureWebJobsStorage"
    sweep = orjson.loads(functions["usage_sweep"].get_raw_bindings()[0])
    assert sweep["type"] == "timerTrigger" and sweep["schedule"] == "0 */5 * * * *"
    host = orjson.loads((Path(__file__).resolve().parents[2] / "host.json").read_bytes())
    # The runtime's poison rule (Functions) and the summariser's (`aigw serve`) give up after as many deliveries.
    assert host["extensions"]["queues"]["maxDequeueCount"] == UsageSettings().max_dequeues == 5
