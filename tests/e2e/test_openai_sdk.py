"""The official openai SDK, pointed at `aigw serve` in front of `aigw simulate`, as an application would."""

from __future__ import annotations

import time

import openai
import pytest
from openai import AsyncAzureOpenAI, AsyncOpenAI, AzureOpenAI, OpenAI
from openai.types.chat import ChatCompletionMessageParam

from gateway_core.simulator.records import fingerprint
from tests.servers import BACKEND_KEY, CLIENT_KEY, clear_sim_requests, sim_requests

API_VERSION = "2024-10-21"
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Say hello to the gateway."},
]


def azure(url: str, key: str = CLIENT_KEY) -> AzureOpenAI:
    return AzureOpenAI(azure_endpoint=url, api_key=key, api_version=API_VERSION, max_retries=0)


def test_azure_chat_completion(gateway_url: str) -> None:
    raw = azure(gateway_url).chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert raw.headers["x-aigw-backend"] == "sim-east"
    assert len(raw.headers["x-request-id"]) >= 16


@pytest.mark.parametrize("prefix", ["/v1", "/openai/v1"])
def test_openai_surface_chat_completion(gateway_url: str, prefix: str) -> None:
    client = OpenAI(base_url=gateway_url + prefix, api_key=CLIENT_KEY, max_retries=0)
    completion = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=5)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 5


def test_client_request_id_is_echoed(gateway_url: str) -> None:
    raw = azure(gateway_url).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES, extra_headers={"x-request-id": "trace-42"}
    )
    assert raw.headers["x-request-id"] == "trace-42"


def test_legacy_completions(gateway_url: str) -> None:
    completion = azure(gateway_url).completions.create(model="gpt-4o-mini", prompt="Once upon a time", max_tokens=3)
    assert completion.object == "text_completion"
    assert completion.choices[0].text
    assert completion.usage is not None and completion.usage.completion_tokens == 3


def test_embeddings_base64_default_and_float(gateway_url: str) -> None:
    client = azure(gateway_url)
    # The SDK asks for base64 by default and decodes it; the vector must survive the trip through the gateway.
    default = client.embeddings.create(model="text-embedding-3-small", input=["turn on the light", "hello"])
    floats = client.embeddings.create(
        model="text-embedding-3-small", input=["turn on the light", "hello"], encoding_format="float"
    )
    assert [len(d.embedding) for d in default.data] == [1536, 1536]
    assert default.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    assert floats.usage.prompt_tokens > 0


def test_streaming_arrives_incrementally_and_ends_cleanly(gateway_url: str) -> None:
    stream = azure(gateway_url).chat.completions.create(
        model="slow-stream", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    arrivals: list[float] = []
    pieces: list[str] = []
    usage = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    assert len(pieces) == 20
    # The simulator spaces 20 tokens 40 ms apart: a gateway that buffered would deliver them all at once.
    assert arrivals[-1] - arrivals[0] > 0.4
    assert usage is not None and usage.completion_tokens == 20


async def test_async_clients_chat_and_stream(gateway_url: str) -> None:
    async_azure = AsyncAzureOpenAI(
        azure_endpoint=gateway_url, api_key=CLIENT_KEY, api_version=API_VERSION, max_retries=0
    )
    async_openai = AsyncOpenAI(base_url=gateway_url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    completion = await async_azure.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert completion.choices[0].message.content
    stream = await async_openai.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == completion.choices[0].message.content  # the simulator answers one prompt one way
    await async_azure.close()
    await async_openai.close()


def test_client_key_never_reaches_backend_and_backend_key_never_reaches_client(gateway_url: str, sim_url: str) -> None:
    clear_sim_requests(sim_url)
    client = OpenAI(base_url=gateway_url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=MESSAGES,
        extra_headers={"x-aigw-sim-latency-ms": "1", "x-custom-header": "not-forwarded", "cookie": "session=1"},
    )
    (seen,) = sim_requests(sim_url)
    assert seen["headers"]["api-key"] == fingerprint(BACKEND_KEY)  # the records show a fingerprint only
    assert "authorization" not in seen["headers"]
    assert "cookie" not in seen["headers"] and "x-custom-header" not in seen["headers"]
    assert seen["headers"]["x-aigw-sim-latency-ms"] == "1"
    assert not any(CLIENT_KEY in value for value in seen["headers"].values())
    assert seen["query"]["api-version"] == "2024-10-21"  # the backend's default: the client sent none
    assert BACKEND_KEY not in raw.text
    assert not any(BACKEND_KEY in value for value in raw.headers.values())


def test_azure_client_api_version_is_forwarded(gateway_url: str, sim_url: str) -> None:
    clear_sim_requests(sim_url)
    client = AzureOpenAI(
        azure_endpoint=gateway_url, api_key=CLIENT_KEY, api_version="2025-01-01-preview", max_retries=0
    )
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    (seen,) = sim_requests(sim_url)
    assert seen["query"]["api-version"] == "2025-01-01-preview"
    assert seen["path"] == "/openai/deployments/gpt-4o/chat/completions"


def test_unknown_body_fields_pass_through(gateway_url: str, sim_url: str) -> None:
    clear_sim_requests(sim_url)
    client = azure(gateway_url)
    completion = client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, extra_body={"a_future_option": {"depth": 3}}
    )
    assert completion.choices[0].message.content


def test_backend_deployment_name_mapping(gateway_url: str, sim_url: str) -> None:
    clear_sim_requests(sim_url)
    azure(gateway_url).chat.completions.create(model="slow-stream", messages=MESSAGES, max_tokens=1)
    (seen,) = sim_requests(sim_url)
    assert seen["path"] == "/openai/deployments/slow/chat/completions"


def test_invalid_key_is_401(gateway_url: str) -> None:
    with pytest.raises(openai.AuthenticationError) as wrong:
        azure(gateway_url, key="not-a-key").chat.completions.create(model="gpt-4o", messages=MESSAGES)
    body = wrong.value.body
    assert isinstance(body, dict) and body["type"] == "authentication_error" and body["code"] == "invalid_api_key"


def test_unknown_deployment_is_404(gateway_url: str) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        azure(gateway_url).chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert isinstance(exc.value.body, dict) and exc.value.body["code"] == "DeploymentNotFound"
    assert "no-such-model" in exc.value.body["message"]


def test_deployment_outside_the_keys_allowlist_is_404_as_if_unknown(gateway_url: str) -> None:
    from tests.servers import OTHER_KEY

    with pytest.raises(openai.NotFoundError) as exc:
        azure(gateway_url, key=OTHER_KEY).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert isinstance(exc.value.body, dict) and exc.value.body["code"] == "DeploymentNotFound"
    assert azure(gateway_url, key=OTHER_KEY).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices


@pytest.mark.parametrize(
    ("fault", "error", "status"),
    [
        ("429", openai.RateLimitError, 429),
        ("500", openai.InternalServerError, 500),
        ("503", openai.InternalServerError, 503),
    ],
)
def test_backend_errors_pass_through_with_status_and_body(
    gateway_url: str, fault: str, error: type[openai.APIStatusError], status: int
) -> None:
    with pytest.raises(error) as exc:
        azure(gateway_url).chat.completions.create(
            model="gpt-4o", messages=MESSAGES, extra_headers={"x-aigw-sim-fault": fault, "x-aigw-sim-retry-after": "7"}
        )
    assert exc.value.status_code == status
    assert exc.value.response.headers["x-aigw-backend"] == "sim-east"
    if fault in ("429", "503"):
        assert exc.value.response.headers["retry-after"] == "7"
        assert exc.value.response.headers["retry-after-ms"] == "7000"
    body = exc.value.body
    assert isinstance(body, dict) and body["code"] in ("429", "InternalServerError", "ServiceUnavailable")
