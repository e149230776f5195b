"""The Functions app in-process: its bindings, and its HTTP trigger running the same pipeline."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from gateway_core.simulator.records import fingerprint
from tests.servers import BACKEND_KEY, CLIENT_KEY, COSMOS_KEY_ENV, GATEWAY_ENV, gateway_config, write_yaml
from tests.upstream import serve_recorders

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def trigger(
    functions: dict[str, Any], sim_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Any]:
    # The host reads its config when it builds the gateway: on first use in each event loop.
    monkeypatch.setenv("AIGW_CONFIG", str(write_yaml(tmp_path / "gateway.yaml", gateway_config(sim_url))))
    for name, value in GATEWAY_ENV.items():
        monkeypatch.setenv(name, value)
    yield functions["gateway"].get_user_function()
    import function_app

    await function_app.host.close()


def starlette_request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Request:
    path_only, _, query = path.partition("?")
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": method,
        "path": path_only,
        "raw_path": path_only.encode(),
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 7071),
        "scheme": "http",
        "root_path": "",
        "http_version": "1.1",
    }
    return Request(scope, receive)


async def body_of(response: Response) -> bytes:
    if isinstance(response, StreamingResponse):
        iterator: AsyncIterator[Any] = response.body_iterator  # type: ignore[assignment]
        return b"".join([c if isinstance(c, bytes) else c.encode() async for c in iterator])
    return bytes(response.body)


def test_bindings_and_host_json(functions: dict[str, Any]) -> None:
    assert set(functions) == {"gateway", "health", "usage_sweep", "usage_summary"}
    timer = orjson.loads(functions["health"].get_raw_bindings()[0])
    assert timer["type"] == "timerTrigger" and timer["schedule"] == "*/30 * * * * *"
    bindings = orjson.loads(functions["gateway"].get_raw_bindings()[0])
    assert bindings["type"] == "httpTrigger"
    assert bindings["route"] == "{*path}"
    assert bindings["authLevel"].lower() == "anonymous"
    host = orjson.loads((ROOT / "host.json").read_bytes())
    assert host["extensions"]["http"]["routePrefix"] == ""


async def test_http_trigger_serves_chat_json(trigger: Any) -> None:
    body = orjson.dumps({"messages": [{"role": "user", "content": "hi"}]})
    request = starlette_request(
        "POST",
        "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
        body,
        {"api-key": CLIENT_KEY, "content-type": "application/json", "content-length": str(len(body))},
    )
    response = await trigger(request)
    payload = await body_of(response)
    assert response.status_code == 200, payload
    assert orjson.loads(payload)["object"] == "chat.completion"
    assert response.headers["x-aigw-backend"] == "sim-east"
    assert BACKEND_KEY.encode() not in payload


async def test_http_trigger_streams_sse(trigger: Any) -> None:
    body = orjson.dumps({"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    request = starlette_request("POST", "/v1/chat/completions", body, {"authorization": f"Bearer {CLIENT_KEY}"})
    response = await trigger(request)
    assert isinstance(response, StreamingResponse)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = (await body_of(response)).split(b"\n\n")
    assert events[-2] == b"data: [DONE]"
    assert sum(1 for e in events if e.startswith(b"data: {")) >= 3


async def test_http_trigger_errors_are_openai_style(trigger: Any) -> None:
    response = await trigger(starlette_request("POST", "/v1/chat/completions", b"{}"))
    assert response.status_code == 401
    error = orjson.loads(await body_of(response))["error"]
    assert error["type"] == "authentication_error"
    healthz = await trigger(starlette_request("GET", "/healthz"))
    assert healthz.status_code == 200


@pytest.mark.parametrize("enabled", [True, False])
async def test_timer_trigger_probes_every_backend_unless_probes_are_off(
    functions: dict[str, Any],
    app_host: Any,
    sim_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    enabled: bool,
) -> None:
    from azure.functions.timer import TimerRequest

    from tests.servers import clear_sim_requests, sim_requests

    use_config(monkeypatch, tmp_path / "gateway.yaml", gateway_config(sim_url, routing={"probe": {"enabled": enabled}}))
    clear_sim_requests(sim_url)
    await functions["health"].get_user_function()(TimerRequest(past_due=False))
    if not enabled:
        assert sim_requests(sim_url) == []
        return
    (probe,) = sim_requests(sim_url)
    assert probe["method"] == "GET" and probe["path"] == "/openai/models"
    assert probe["headers"]["api-key"] == fingerprint(BACKEND_KEY)


async def test_http_trigger_refuses_an_unauthenticated_caller_without_reading_its_body(trigger: Any) -> None:
    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read before the caller was authenticated")

    scope = starlette_request("POST", "/v1/chat/completions").scope
    scope["headers"] = [(b"content-length", b"10000000")]
    response = await trigger(Request(scope, receive))
    assert response.status_code == 401


def test_the_http_trigger_takes_every_method(functions: dict[str, Any]) -> None:
    # With a methods list the host would answer any other method with its own empty 404 before the gateway.
    bindings = orjson.loads(functions["gateway"].get_raw_bindings()[0])
    assert "methods" not in bindings


@pytest.mark.parametrize("method", ["PUT", "DELETE", "OPTIONS", "PATCH"])
async def test_an_unserved_method_gets_the_gateways_openai_error(trigger: Any, method: str) -> None:
    response = await trigger(starlette_request(method, "/v1/chat/completions", headers={"api-key": CLIENT_KEY}))
    assert response.status_code == 404
    error = orjson.loads(await body_of(response))["error"]
    assert error["code"] == "path_not_found"
    assert f"aigw does not serve {method} /v1/chat/completions" in error["message"]
    assert response.headers["x-request-id"]


@pytest.fixture
async def app_host(functions: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    """``function_app`` with its environment set by the test (``use_config``), its gateway closed at the end."""
    import function_app

    for name, value in {**GATEWAY_ENV, **COSMOS_KEY_ENV}.items():
        monkeypatch.setenv(name, value)
    yield function_app
    await function_app.host.close()


def use_config(monkeypatch: pytest.MonkeyPatch, path: Path, config: dict[str, Any]) -> None:
    monkeypatch.setenv("AIGW_CONFIG", str(write_yaml(path, config)))


def chat_request() -> Request:
    body = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    return starlette_request("POST", "/v1/chat/completions", body, {"api-key": CLIENT_KEY})


async def test_invocations_reuse_one_gateway_and_one_upstream_connection(
    functions: dict[str, Any], app_host: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from azure.functions.timer import TimerRequest

    with serve_recorders() as [(url, recorder)]:
        backend = {"name": "rec", "url": url, "auth": {"type": "none"}, "deployments": ["gpt-4o"]}
        use_config(monkeypatch, tmp_path / "gateway.yaml", gateway_config(url, backends=[backend], routing={}))
        http, timer = functions["gateway"].get_user_function(), functions["health"].get_user_function()
        gateway = await app_host.host.gateway()
        for _ in range(3):
            assert (await trigger_and_read(http, chat_request())) == 200
        await timer(TimerRequest(past_due=False))  # its probe goes through the same gateway's session
        for _ in range(3):
            assert (await trigger_and_read(http, chat_request())) == 200
        assert await app_host.host.gateway() is gateway and not gateway.closed
    paths = [r.path for r in recorder.received]
    assert paths.count("/openai/deployments/gpt-4o/chat/completions") == 6 and paths.count("/openai/models") == 1
    # One aiohttp session kept across invocations keeps its connection: every request, the probe's too,
    # arrived from the same client port. A session per invocation would open a connection each time.
    assert len({r.peer for r in recorder.received}) == 1


async def trigger_and_read(http: Any, request: Request) -> int:
    response = await http(request)
    await body_of(response)
    return int(response.status_code)


async def test_the_timer_triggers_probe_results_reach_http_triggers_through_the_health_store(
    functions: dict[str, Any],
    app_host: Any,
    sim_url: str,
    cosmos_address: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from azure.functions.timer import TimerRequest

    from aigw.functions_host import FunctionsHost

    down = {"name": "down", "url": "http://127.0.0.1:9", "auth": {"type": "none"}, "deployments": ["gpt-4o"]}
    config = gateway_config(sim_url)
    config["backends"] = [{**down, "priority": 0}, {**config["backends"][0], "priority": 1}]
    config["routing"] = {"breaker": {"failures": 1}}
    health = f"cosmos://{cosmos_address}/fn{uuid.uuid4().hex[:8]}?key_env=AIGW_TEST_COSMOS_KEY&create_if_missing=true"
    config["stores"] = {"health": health}
    use_config(monkeypatch, tmp_path / "gateway.yaml", config)

    gateway = await app_host.host.gateway()
    await functions["health"].get_user_function()(TimerRequest(past_due=False))
    assert gateway.health.state("down") == "open" and await app_host.host.gateway() is gateway
    # This instance's HTTP trigger routes around the backend its timer found down: one attempt, not two.
    response = await functions["gateway"].get_user_function()(chat_request())
    assert response.status_code == 200, await body_of(response)
    assert response.headers["x-aigw-backend"] == "sim-east" and response.headers["x-aigw-attempts"] == "1"
    # So does another instance started after the probe: it learns it from the health store, not from a probe.
    other = FunctionsHost(tmp_path)
    try:
        answer = await other.handle(chat_request())
        assert answer.status_code == 200
        assert answer.headers["x-aigw-backend"] == "sim-east" and answer.headers["x-aigw-attempts"] == "1"
    finally:
        await other.close()


async def test_cosmos_app_settings_hold_limits_cache_and_health(
    functions: dict[str, Any],
    app_host: Any,
    sim_url: str,
    cosmos_address: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway_core.storage.factory import cache_store, counter_store, health_store

    # No stores in the config: the app settings put all three in Cosmos DB (an emulator: it may create them).
    database = f"app{uuid.uuid4().hex[:8]}"
    config = gateway_config(sim_url, cache={"enabled": True})
    config.pop("stores")
    config["limits"] = {"rules": [{"name": "q", "key": "user", "token_quota": 150, "quota_period": "daily"}]}
    use_config(monkeypatch, tmp_path / "gateway.yaml", config)
    monkeypatch.setenv("COSMOS_ENDPOINT", f"https://{cosmos_address}/")
    monkeypatch.setenv("COSMOS_KEY", COSMOS_KEY_ENV["AIGW_TEST_COSMOS_KEY"])
    monkeypatch.setenv("COSMOS_DATABASE", database)
    monkeypatch.setenv("COSMOS_CREATE_IF_MISSING", "true")
    # Usage is not Cosmos DB's (Table Storage in Azure, tested with Azurite): kept in memory here.
    monkeypatch.setenv("AIGW_USAGE_URL", "memory://")
    monkeypatch.chdir(tmp_path)  # SQLite, if it were used instead, would write ./.aigw/ here
    http = functions["gateway"].get_user_function()
    gateway = await app_host.host.gateway()

    def chat(text: str) -> Request:
        body = orjson.dumps({"messages": [{"role": "user", "content": text}], "temperature": 0, "max_tokens": 30})
        return starlette_request("POST", "/openai/deployments/gpt-4o/chat/completions", body, {"api-key": CLIENT_KEY})

    first = await http(chat("cache me"))
    assert first.status_code == 200 and first.headers["x-aigw-cache"] == "MISS"
    await body_of(first)
    await gateway.tasks.drain()  # the cache write and the limit settlement run after the answer
    again = await http(chat("cache me"))
    assert again.status_code == 200 and again.headers["x-aigw-cache"] == "HIT", await body_of(again)
    statuses = []
    for n in range(8):
        response = await http(chat(f"question {n}"))
        await body_of(response)
        await gateway.tasks.drain()
        statuses.append(response.status_code)
        if response.status_code != 200:
            break
    assert statuses[0] == 200 and statuses[-1] == 403, statuses  # the daily quota, counted in Cosmos DB
    assert not (tmp_path / ".aigw").exists()
    # Each port's container is in the database the app settings named (opened as Azure would: no creating).
    plain = f"cosmos://{cosmos_address}/{database}?key_env=AIGW_TEST_COSMOS_KEY"
    for opener in (counter_store, cache_store, health_store):
        store = opener(plain, COSMOS_KEY_ENV)
        try:
            await store.start()
        finally:
            await store.close()


async def usage_on_sqlite(app_host: Any, sim_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The Functions app's gateway with usage recording on, to a SQLite usage store in ``tmp_path``."""
    config = gateway_config(sim_url, usage={"enabled": True})
    config["stores"] = {"health": "memory://", "usage": f"sqlite:///{tmp_path}/usage.db"}
    use_config(monkeypatch, tmp_path / "gateway.yaml", config)
    return await app_host.host.gateway()


@pytest.mark.parametrize("stream", [False, True])
async def test_each_invocation_writes_its_usage_record_before_it_ends(
    functions: dict[str, Any],
    app_host: Any,
    sim_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stream: bool,
) -> None:
    from gateway_core.usage.api import utc_today
    from gateway_core.usage.record import RecordQuery, SummaryQuery

    gateway = await usage_on_sqlite(app_host, sim_url, tmp_path, monkeypatch)
    runtime = gateway.usage_runtime
    assert runtime is not None and runtime._consumer is None  # no background work on Functions
    body = orjson.dumps({"model": "gpt-4o", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
    response = await functions["gateway"].get_user_function()(
        starlette_request("POST", "/v1/chat/completions", body, {"api-key": CLIENT_KEY})
    )
    await body_of(response)  # a stream's relay ends here, inside the invocation
    assert response.status_code == 200
    # Written, not buffered: a worker frozen or recycled right after the invocation loses nothing.
    assert runtime.writer.buffered_records == 0
    day = utc_today(time.time()).isoformat()
    (record,) = await runtime.store.records(RecordQuery(day, day, request_id=response.headers["x-request-id"]))
    assert record.stream is stream and record.status == 200
    # On SQLite its batch was summarised in the transaction that wrote it: nothing waits for a queue trigger
    # (which reads the Storage queue, never this in-process one).
    assert await runtime.queue.receive(10, 30.0) == []
    (totals,) = (await runtime.store.summaries(SummaryQuery(day, day))).values()
    assert totals.requests == 1 and totals.prompt_tokens == record.prompt_tokens


async def test_a_stream_its_reader_leaves_is_recorded_before_the_invocation_ends(
    functions: dict[str, Any], app_host: Any, sim_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway_core.usage.record import RecordQuery

    gateway = await usage_on_sqlite(app_host, sim_url, tmp_path, monkeypatch)
    body = orjson.dumps({"model": "slow-stream", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    response = await functions["gateway"].get_user_function()(
        starlette_request("POST", "/v1/chat/completions", body, {"api-key": CLIENT_KEY})
    )
    iterator: Any = response.body_iterator
    await iterator.__anext__()
    await iterator.aclose()  # the reader went away after the first chunk
    assert gateway.usage_runtime is not None and gateway.usage_runtime.writer.buffered_records == 0
    (record,) = await gateway.usage_runtime.store.records(RecordQuery("2000-01-01", "2100-01-01"))
    assert record.error_code == "client_disconnected" and record.stream


async def test_a_caller_that_leaves_mid_body_is_recorded(
    functions: dict[str, Any], app_host: Any, sim_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Authenticated on its head, then gone before its body ended: one record (499), as aigw serve makes.
    gateway = await usage_on_sqlite(app_host, sim_url, tmp_path, monkeypatch)
    runtime = gateway.usage_runtime
    assert runtime is not None
    parts: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'{"model": "gp', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        return parts.pop(0) if parts else {"type": "http.disconnect"}

    scope = starlette_request("POST", "/v1/chat/completions", headers={"api-key": CLIENT_KEY}).scope
    scope["headers"].append((b"x-request-id", b"left-mid-body"))
    with pytest.raises(ClientDisconnect):
        await functions["gateway"].get_user_function()(Request(scope, receive))
    from gateway_core.usage.api import utc_today
    from gateway_core.usage.record import RecordQuery

    day = utc_today(time.time()).isoformat()
    (record,) = await runtime.store.records(RecordQuery(day, day, request_id="left-mid-body"))
    assert (record.status, record.error_code, record.user) == (499, "client_disconnected", "alice")
