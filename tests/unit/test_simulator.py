"""The simulator's own controls: runtime fault changes, its TPM limit, the probe listing."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from aigw.serve import BackgroundServers
from gateway_core.simulator.app import SimulatorApp
from gateway_core.simulator.generate import count_tokens
from gateway_core.simulator.settings import SimConfig, SimDeployment

CHAT = "/openai/deployments/{d}/chat/completions?api-version=2024-10-21"


@pytest.fixture
def sim() -> Iterator[str]:
    servers = BackgroundServers()
    app = SimulatorApp(SimConfig(deployments=(SimDeployment(name="gpt-4o"), SimDeployment(name="small", tpm_limit=60))))
    port = servers.serve(app)
    yield f"http://127.0.0.1:{port}"
    servers.stop()


def ask(url: str, deployment: str = "gpt-4o") -> httpx.Response:
    return httpx.post(url + CHAT.format(d=deployment), json={"messages": [{"role": "user", "content": "hi"}]})


def test_faults_flip_at_run_time_without_a_restart(sim: str) -> None:
    assert ask(sim).status_code == 200
    changed = httpx.post(sim + "/++/config", json={"faults": [{"kind": "429", "retry_after_s": 4}]})
    assert changed.status_code == 200 and changed.json()["faults"][0]["kind"] == "429"
    throttled = ask(sim)
    assert throttled.status_code == 429 and throttled.headers["retry-after"] == "4"
    assert httpx.get(sim + "/openai/models").status_code == 429  # probes see it too
    httpx.post(sim + "/++/config", json={"faults": [{"kind": "500"}]})
    assert ask(sim).status_code == 500
    httpx.post(sim + "/++/config", json={"faults": []})
    assert ask(sim).status_code == 200
    assert httpx.get(sim + "/openai/models").json()["data"][0]["id"] == "gpt-4o"
    bad = httpx.post(sim + "/++/config", json={"faults": [{"kind": "meteor"}]})
    assert bad.status_code == 400 and ask(sim).status_code == 200


def test_own_tokens_per_minute_limit(sim: str) -> None:
    answers = [ask(sim, "small") for _ in range(5)]  # 8 prompt + 16 completion = 24 tokens each, 60 a minute
    assert [a.status_code for a in answers][:2] == [200, 200]
    refused = answers[2]
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert ask(sim, "gpt-4o").status_code == 200  # other deployments are not limited


TOOLS = [
    {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
]


def stream_events(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    events = [e[6:] for e in response.text.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [orjson.loads(e) for e in events[:-1]]


@pytest.mark.parametrize(
    ("tool_choice", "name"),
    [({"type": "function", "function": {"name": "get_weather"}}, "get_weather"), ("required", "search")],
)
def test_a_forced_tool_call_is_streamed_and_billed_by_its_name_and_arguments(
    sim: str, tool_choice: Any, name: str
) -> None:
    body = {
        "messages": [{"role": "user", "content": "weather?"}],
        "tools": TOOLS,
        "tool_choice": tool_choice,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = stream_events(httpx.post(sim + CHAT.format(d="gpt-4o"), json=body))
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    assert deltas[0]["tool_calls"][0]["function"]["name"] == name and deltas[0]["content"] is None
    arguments = "".join(call["function"].get("arguments", "") for d in deltas for call in d.get("tool_calls", ()))
    assert orjson.loads(arguments)["text"]  # valid JSON, built from the reply's words
    assert not any(d.get("content") for d in deltas)
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"
    usage = events[-1]["usage"]
    assert usage["completion_tokens"] == count_tokens(name, "gpt-4o") + count_tokens(arguments, "gpt-4o")

    answer = httpx.post(sim + CHAT.format(d="gpt-4o"), json={**body, "stream": False, "stream_options": None})
    call = answer.json()["choices"][0]["message"]["tool_calls"][0]
    assert (call["function"]["name"], call["function"]["arguments"]) == (name, arguments)
    assert answer.json()["usage"]["completion_tokens"] == usage["completion_tokens"]


def test_tools_without_a_forced_choice_answer_with_text(sim: str) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "tools": TOOLS, "tool_choice": "auto"}
    message = httpx.post(sim + CHAT.format(d="gpt-4o"), json=body).json()["choices"][0]["message"]
    assert message["content"] and "tool_calls" not in message


def test_usage_is_omitted_on_request_or_by_config(sim: str) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "stream_options": {"include_usage": True}}
    with_usage = stream_events(httpx.post(sim + CHAT.format(d="gpt-4o"), json=body))
    assert with_usage[-1]["choices"] == [] and with_usage[-1]["usage"]["total_tokens"] > 0
    without = stream_events(httpx.post(sim + CHAT.format(d="gpt-4o"), json=body, headers={"x-aigw-sim-no-usage": "1"}))
    assert all(e["choices"] and "usage" not in e for e in without)
    httpx.post(sim + "/++/config", json={"stream_usage": False})
    by_config = stream_events(httpx.post(sim + CHAT.format(d="gpt-4o"), json=body))
    assert all(e["choices"] and "usage" not in e for e in by_config)


@pytest.mark.parametrize(("version", "status"), [("2024-06-01", 400), ("2024-08-01-preview", 400), ("2024-10-21", 200)])
def test_stream_options_before_2024_09_01_are_refused_as_azure_does(sim: str, version: str, status: int) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "stream_options": {"include_usage": True}}
    url = sim + f"/openai/deployments/gpt-4o/chat/completions?api-version={version}"
    response = httpx.post(url, json=body)
    assert response.status_code == status
    if status == 400:
        assert "stream_options" in response.json()["error"]["message"]
    assert httpx.post(url, json={"messages": body["messages"], "stream": True}).status_code == 200


def test_requests_record_the_body_bytes_as_received(sim: str) -> None:
    body = b'{"messages":[{"role":"user","content":"caf\\u00e9 \xc3\xa9"}],  "n": 1}\n'
    assert httpx.post(sim + CHAT.format(d="gpt-4o"), content=body).status_code == 200
    seen = httpx.get(sim + "/_sim/requests").json()["requests"][-1]
    assert base64.b64decode(seen["body_base64"]) == body  # byte for byte: spacing, escapes, raw UTF-8
    assert (seen["body_bytes"], seen["body_truncated"]) == (len(body), False)
    httpx.post(sim + "/++/config", json={"record_body_bytes": 10})
    httpx.post(sim + CHAT.format(d="gpt-4o"), content=body)
    cut = httpx.get(sim + "/_sim/requests").json()["requests"][-1]
    assert base64.b64decode(cut["body_base64"]) == body[:10] and cut["body_truncated"] is True


def test_the_simulators_listings_never_show_its_key_or_a_credential_it_received() -> None:
    servers = BackgroundServers()
    port = servers.serve(SimulatorApp(SimConfig(api_key="s3cret-backend-key")))
    sim = f"http://127.0.0.1:{port}"
    try:
        chat = httpx.post(sim + CHAT.format(d="x"), json={"messages": []}, headers={"api-key": "s3cret-backend-key"})
        assert chat.status_code == 200
        shown = httpx.get(sim + "/++/config")
        assert "s3cret" not in shown.text and shown.json()["api_key_set"] is True
        listed = httpx.get(sim + "/_sim/requests")
        assert "s3cret" not in listed.text
        assert listed.json()["requests"][-1]["headers"]["api-key"].startswith("sha256:")
    finally:
        servers.stop()


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-aigw-sim-latency-ms", "soon"),
        ("x-aigw-sim-latency-ms", "-5"),
        ("x-aigw-sim-latency-ms", "inf"),
        ("x-aigw-sim-completion-tokens", "1.5"),
        ("x-aigw-sim-retry-after", "nan"),
        ("x-aigw-sim-cached-tokens", "1.5"),
        ("x-aigw-sim-reasoning-tokens", "-1"),
    ],
)
def test_a_bad_control_header_is_a_400_not_a_crash(sim: str, header: str, value: str) -> None:
    headers = {header: value, "x-aigw-sim-fault": "429"} if header.endswith("retry-after") else {header: value}
    answer = httpx.post(sim + CHAT.format(d="gpt-4o"), json={"messages": []}, headers=headers)
    assert answer.status_code == 400 and header in answer.json()["error"]["message"]
