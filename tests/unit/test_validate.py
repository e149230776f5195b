"""What the validate policy refuses before anything costly runs, through the whole pipeline in-process.

The gateway here has caching (exact and semantic) and a token limit on, and one wildcard backend next to the
named ones, so a refused input is refused whichever path it would otherwise take; the backend is the
simulator on a real loopback port, which records what reached it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest

from aigw.serve import BackgroundServers
from gateway_core.app import Gateway
from gateway_core.config import config_from_dict, sha256_hex
from gateway_core.context import GatewayRequest, GatewayResponse
from gateway_core.simulator.app import SimulatorApp
from gateway_core.simulator.settings import SimConfig

KEY = {"api-key": "validate-key"}
HELLO = [{"role": "user", "content": "hello"}]
PARSER_MAX_DEPTH = 1024  # orjson refuses deeper documents itself (a 400 for invalid JSON)


@pytest.fixture(scope="module")
def sim() -> Iterator[tuple[str, SimulatorApp]]:
    servers = BackgroundServers()
    app = SimulatorApp(SimConfig(completion_tokens=5))
    port = servers.serve(app)
    yield f"http://127.0.0.1:{port}", app
    servers.stop()


def make_config(sim_url: str, *, wildcard: bool = False, simulator: bool = True) -> Any:
    deployments: list[Any] = ["gpt-4o", "gpt-4o-mini", "text-embedding-3-small"]
    return config_from_dict(
        {
            "backends": [
                {
                    "name": "sim",
                    "url": sim_url,
                    "auth": {"type": "none"},
                    "simulator": simulator,
                    "deployments": ["*"] if wildcard else deployments,
                }
            ],
            "keys": [{"name": "k", "sha256": sha256_hex("validate-key"), "user": "u", "tenant": "t"}],
            "limits": {"rules": [{"name": "tpm", "key": "user", "tokens_per_minute": 10_000_000}]},
            "cache": {
                "enabled": True,
                "deterministic_only": False,
                "semantic": {"deployments": ["gpt-4o-mini"], "embedding_deployment": "text-embedding-3-small"},
            },
            "stores": {"counters": "memory://", "cache": "memory://", "health": "memory://"},
        }
    )


@pytest.fixture
async def gateway(sim: tuple[str, SimulatorApp]) -> AsyncIterator[Gateway]:
    gw = Gateway(make_config(sim[0]))
    await gw.start()
    yield gw
    await gw.close()


@pytest.fixture
async def wildcard_gateway(sim: tuple[str, SimulatorApp]) -> AsyncIterator[Gateway]:
    gw = Gateway(make_config(sim[0], wildcard=True))
    await gw.start()
    yield gw
    await gw.close()


async def post(
    gateway: Gateway,
    path: str,
    body: dict[str, Any] | bytes,
    query: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> GatewayResponse:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return await gateway.handle(GatewayRequest("POST", path, query or {}, {**KEY, **(headers or {})}, raw, len(raw)))


def error_of(response: GatewayResponse, status: int = 400) -> dict[str, Any]:
    assert response.status == status, response.body
    error: dict[str, Any] = orjson.loads(response.body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


# --- deployment names -------------------------------------------------------------------------------------

BAD_NAMES = [
    "x/../gpt-4o",
    "../../x",
    "..",
    ".hidden",
    "-dash-first",
    "_under-first",
    "gpt-4o?api-version=2099-01-01",
    "gpt-4o#frag",
    "gpt-4o%2Fx",
    "gpt-4o%",
    "gpt 4o",
    "gpt-4o/chat",
    "gpt-4o\\x",
    "gpt-4o\n",
    "gpt-4o\x00",
    "gpt\u20114o",  # a non-breaking hyphen that looks like '-'
    "gpt-4\u043e",  # Cyrillic o
    "gpt-\uff14o",  # fullwidth digit four
    "x" * 65,
]


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_bad_model_names_are_400_on_the_openai_surface(
    wildcard_gateway: Gateway, sim: tuple[str, SimulatorApp], name: str
) -> None:
    before = len(sim[1].requests)
    response = await post(wildcard_gateway, "/v1/chat/completions", {"model": name, "messages": HELLO})
    error = error_of(response)
    assert (error["code"], error["param"]) == ("invalid_deployment_name", "model")
    assert len(sim[1].requests) == before  # nothing went upstream


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_bad_deployment_names_are_400_on_the_azure_surface(
    wildcard_gateway: Gateway, sim: tuple[str, SimulatorApp], name: str
) -> None:
    # The path as the ASGI server hands it over: already percent-decoded, so %2F arrives as '/'.
    before = len(sim[1].requests)
    path = f"/openai/deployments/{name}/chat/completions"
    response = await post(wildcard_gateway, path, {"messages": HELLO}, {"api-version": "2024-10-21"})
    error = error_of(response)
    assert (error["code"], error["param"]) == ("invalid_deployment_name", "deployment")
    assert len(sim[1].requests) == before


@pytest.mark.parametrize("name", ["a", "gpt-5-not-here", "my.dep_1-x", "9lives", "x" * 64])
async def test_valid_names_the_gateway_does_not_serve_stay_404(gateway: Gateway, name: str) -> None:
    response = await post(gateway, "/v1/chat/completions", {"model": name, "messages": HELLO})
    assert error_of(response, 404)["code"] == "DeploymentNotFound"


async def test_a_valid_name_reaches_a_wildcard_backend_unchanged(
    wildcard_gateway: Gateway, sim: tuple[str, SimulatorApp]
) -> None:
    response = await post(wildcard_gateway, "/v1/chat/completions", {"model": "gpt-4o.2_x-1", "messages": HELLO})
    assert response.status == 200, response.body
    assert sim[1].requests[-1]["raw_path"] == "/openai/deployments/gpt-4o.2_x-1/chat/completions"


# --- api-version ------------------------------------------------------------------------------------------

BAD_VERSIONS = [
    "2024-10-21&foo=bar",
    "2024-10-21#x",
    "../../x",
    "2024-10-21/../../x",
    "2024-13-01",
    "2024-02-30",
    "2024-10-21-beta",
    "2024-10-21-preview-preview",
    "24-10-21",
    "2024-1-21",
    "\u0662\u0660\u0662\u0664-10-21",  # Arabic-Indic digits
    "V1",
    "v2",
    "Latest",
    "2024-10-21\n",
    "2024-10-21 ",
]


@pytest.mark.parametrize("version", BAD_VERSIONS)
async def test_bad_api_versions_are_400(gateway: Gateway, sim: tuple[str, SimulatorApp], version: str) -> None:
    before = len(sim[1].requests)
    response = await post(
        gateway, "/openai/deployments/gpt-4o/chat/completions", {"messages": HELLO}, {"api-version": version}
    )
    error = error_of(response)
    assert (error["code"], error["param"]) == ("invalid_api_version", "api-version")
    assert len(sim[1].requests) == before


@pytest.mark.parametrize("version", ["2024-10-21", "2025-04-01-preview", "v1", "latest", "preview"])
async def test_good_api_versions_go_upstream_as_sent(
    gateway: Gateway, sim: tuple[str, SimulatorApp], version: str
) -> None:
    response = await post(
        gateway, "/openai/deployments/gpt-4o/chat/completions", {"messages": HELLO}, {"api-version": version}
    )
    assert response.status == 200, response.body
    assert sim[1].requests[-1]["query_string"] == f"api-version={version}"


# --- token and choice counts ------------------------------------------------------------------------------

BAD_COUNTS = [0, -1, -(2**63), 1.0, 1.5, 1e23, 2**63, "100", "", True, False, [], {}]


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens", "max_output_tokens", "n"])
@pytest.mark.parametrize("value", BAD_COUNTS, ids=repr)
async def test_bad_counts_are_400_naming_the_field(gateway: Gateway, field: str, value: Any) -> None:
    response = await post(gateway, "/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO, field: value})
    error = error_of(response)
    assert (error["param"], error["code"]) == (field, "invalid_value")
    assert field in error["message"]


@pytest.mark.parametrize(("field", "value"), [("max_tokens", 1_000_001), ("n", 129), ("best_of", 129)])
async def test_counts_over_the_bound_are_400(gateway: Gateway, field: str, value: int) -> None:
    response = await post(gateway, "/v1/completions", {"model": "gpt-4o", "prompt": "hi", field: value})
    assert error_of(response)["param"] == field


async def test_best_of_is_checked_too(gateway: Gateway) -> None:
    response = await post(gateway, "/v1/completions", {"model": "gpt-4o", "prompt": "hi", "best_of": 1e23})
    assert error_of(response)["param"] == "best_of"


async def test_json_exponent_literals_are_not_integers(gateway: Gateway) -> None:
    raw = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e23}'
    assert error_of(await post(gateway, "/v1/chat/completions", raw))["param"] == "max_tokens"


async def test_null_counts_mean_absent_and_sane_ones_pass(gateway: Gateway) -> None:
    fields = {"max_tokens": None, "max_completion_tokens": None, "max_output_tokens": None, "n": None}
    response = await post(gateway, "/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO, **fields})
    assert response.status == 200, response.body
    response = await post(
        gateway, "/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO, "max_tokens": 1_000_000, "n": 2}
    )
    assert response.status == 200, response.body


# --- nesting depth ----------------------------------------------------------------------------------------


DEEP = "\u0000deep"  # a placeholder string, swapped for the nested arrays in the JSON text


def deep_json(body: dict[str, Any], levels: int) -> bytes:
    """``body`` as JSON with ``levels`` nested arrays in place of ``DEEP`` (built as text: orjson.dumps stops
    at 255 levels, and json or a recursive helper would hit Python's recursion limit)."""
    arrays = b"[" * levels + b'"x"' + b"]" * levels
    return orjson.dumps(body).replace(orjson.dumps(DEEP), arrays)


def deep_bodies(depth: int) -> list[tuple[str, bytes]]:
    """Bodies with ``depth`` levels of objects and arrays, the body itself included (as the parser counts)."""
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "x": DEEP}}}
    user = [{"role": "user", "content": DEEP}]
    return [
        # an unknown field: the exact cache key serialises the whole body
        (
            "/v1/chat/completions",
            deep_json({"model": "gpt-4o", "messages": HELLO, "temperature": 0, "x": DEEP}, depth - 1),
        ),
        # tools: counted by the tokenizer, which walks their JSON
        ("/v1/chat/completions", deep_json({"model": "gpt-4o", "messages": HELLO, "tools": [tool]}, depth - 5)),
        # message content
        ("/v1/chat/completions", deep_json({"model": "gpt-4o", "messages": user}, depth - 3)),
        # the semantic cache embeds the last user message
        ("/v1/chat/completions", deep_json({"model": "gpt-4o-mini", "messages": user}, depth - 3)),
        ("/v1/embeddings", deep_json({"model": "text-embedding-3-small", "input": DEEP}, depth - 1)),
        ("/v1/completions", deep_json({"model": "gpt-4o", "prompt": DEEP}, depth - 1)),
    ]


@pytest.mark.parametrize("case", range(6))
async def test_bodies_nested_to_the_parsers_limit_are_400_not_500(gateway: Gateway, case: int) -> None:
    path, raw = deep_bodies(PARSER_MAX_DEPTH)[case]
    orjson.loads(raw)  # the parser accepts it...
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(deep_bodies(PARSER_MAX_DEPTH + 1)[case][1])  # ...and it is the deepest the parser accepts
    error = error_of(await post(gateway, path, raw))
    assert error["code"] == "nesting_too_deep"
    assert "64" in error["message"]


@pytest.mark.parametrize("case", range(6))
async def test_bodies_at_the_depth_limit_are_not_refused_for_depth(gateway: Gateway, case: int) -> None:
    path, raw = deep_bodies(65)[case]
    assert error_of(await post(gateway, path, raw))["code"] == "nesting_too_deep"
    path, raw = deep_bodies(64)[case]
    response = await post(gateway, path, raw)
    assert response.status != 500, response.body
    if response.status == 400:
        assert orjson.loads(response.body)["error"]["code"] != "nesting_too_deep"


# --- very wide bodies -------------------------------------------------------------------------------------


async def test_an_embeddings_input_of_100k_items_is_not_a_500(gateway: Gateway) -> None:
    body = {"model": "text-embedding-3-small", "input": ["word"] * 100_000}
    response = await post(gateway, "/v1/embeddings", body)
    assert response.status != 500, response.body[:300]


async def test_a_one_megabyte_string_is_not_a_500(gateway: Gateway) -> None:
    text = "lorem ipsum dolor sit amet " * (1024 * 1024 // 27)
    response = await post(
        gateway, "/v1/chat/completions", {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}
    )
    assert response.status != 500, response.body[:300]
    response = await post(gateway, "/v1/embeddings", {"model": "text-embedding-3-small", "input": text})
    assert response.status != 500, response.body[:300]


# --- fields of the wrong type -----------------------------------------------------------------------------


async def test_a_text_part_whose_text_is_not_a_string_is_400(gateway: Gateway) -> None:
    # On a semantic-cache deployment the cache joins the texts it embeds: this was a 500.
    for model in ("gpt-4o-mini", "gpt-4o"):
        messages = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": 5}]}]
        error = error_of(await post(gateway, "/v1/chat/completions", {"model": model, "messages": messages}))
        assert (error["param"], error["code"]) == ("messages[0].content[1].text", "invalid_value")


ODD_VALUES: list[Any] = [
    None, True, 0, -1, 1.5, "", "x", [], [None], [1], ["x"], [[]], [{}], {}, {"a": 1},
    [{"role": 5}], [{"role": "user"}], [{"role": "user", "content": 5}], [{"role": "user", "content": [5]}],
    [{"role": "user", "content": {"text": "x"}}],
    [{"role": "user", "content": [{"type": "image_url"}]}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": 5}]}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": 5, "detail": 5}}]}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,%%%"}}]}],
    [{"role": "user", "content": [{"type": "text"}]}], [{"role": "user", "content": [{"type": 5, "text": 5}]}],
    [{"role": "user", "name": 5, "content": "x"}], [{"role": "assistant", "tool_calls": [5, {"function": 5}]}],
    [{"role": "assistant", "function_call": 5}], [{"type": "function", "function": 5}],
    [{"type": "function", "function": {"name": 5, "parameters": 5}}],
    [{"type": "function", "function": {"name": "f", "parameters": {"properties": {"a": 5}}}}],
    [{"type": "function", "function": {"name": "f", "parameters": {"properties": {"a": {"type": 5, "enum": 5}}}}}],
    [{"type": "function", "function": {"name": "f", "parameters": {"properties": {"a": {"enum": [1, None, []]}}}}}],
]  # fmt: skip
ODD_FIELDS = {
    "/v1/chat/completions": ("messages", "tools", "functions", "tool_choice", "stream_options", "temperature", "seed"),
    "/v1/completions": ("prompt", "suffix", "echo", "stop", "temperature"),
    "/v1/embeddings": ("input", "dimensions", "encoding_format"),
}
PLAIN: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"messages": HELLO},
    "/v1/completions": {"prompt": "hi"},
    "/v1/embeddings": {"input": "hi", "model": "text-embedding-3-small"},
}


@pytest.mark.parametrize("path", list(ODD_FIELDS))
async def test_fields_of_any_json_type_are_never_a_500(gateway: Gateway, path: str) -> None:
    """Every field the gateway reads, as every JSON shape: the backend may refuse it, the gateway never fails."""
    for field in ODD_FIELDS[path]:
        for value in ODD_VALUES:
            for model in ("gpt-4o", "gpt-4o-mini"):  # gpt-4o-mini has the semantic cache
                body = {"model": model, "temperature": 0, **PLAIN[path], field: value}
                response = await post(gateway, path, body)
                assert response.status < 500, (field, value, response.body[:200])
