"""What validate refuses beyond names and counts: bodies within the size limit whose shape would stall the event
loop (millions of tiny arrays or messages), and where an unknown deployment name came from.

Parsing 16 MiB of ``[],`` took orjson about 7 s and the depth walk 3 s more, on the event loop; these bodies are
refused by a count of '[' and '{' bytes before parsing, and bodies of millions of numbers or strings by a count
of ',' bytes. A large body of plain text still passes.
"""

from __future__ import annotations

import orjson
import pytest

from gateway_core.app import Gateway
from gateway_core.errors import BadRequest
from gateway_core.policies.json_body import (
    MAX_COMMA_BYTES,
    MAX_CONTAINER_BYTES,
    MAX_CONTAINERS,
    MAX_ELEMENTS,
    MAX_MEMBERS,
    MAX_STRINGS,
    parse_object,
)
from gateway_core.policies.parser_process import LARGE_BODY_BYTES
from gateway_core.policies.validate import MAX_MESSAGES
from tests.unit.test_validate import HELLO, error_of, gateway, post, sim

__all__ = ["gateway", "sim"]  # the fixtures, shared with test_validate.py

CHAT = "/v1/chat/completions"


async def test_a_body_of_millions_of_empty_arrays_is_refused_before_parsing(gateway: Gateway) -> None:
    head = orjson.dumps({"model": "gpt-4o", "messages": HELLO})[:-1]
    raw = head + b',"x":[' + b"[]," * 5_500_000 + b"[]]}"  # just under 16 MiB
    error = error_of(await post(gateway, CHAT, raw))
    assert error["code"] == "too_many_elements" and f"{MAX_CONTAINER_BYTES:,}" in error["message"]


async def test_millions_of_numbers_or_empty_strings_in_one_array_are_refused_before_parsing(gateway: Gateway) -> None:
    """The reviewer's bodies: no bracket beyond the first, so the container count let them through, and each cost
    ~200 MB and seconds to parse."""
    head = orjson.dumps({"model": "gpt-4o", "messages": HELLO})[:-1]
    for items in (b"1234567," * 2_000_000, b'"",' * 5_000_000):
        raw = head + b',"x":[' + items[:-1] + b"]}"
        error = error_of(await post(gateway, CHAT, raw))
        assert error["code"] == "too_many_elements" and f"{MAX_COMMA_BYTES:,}" in error["message"]


async def test_fifteen_mebibytes_of_prose_with_commas_still_pass(gateway: Gateway) -> None:
    text = "lorem ipsum, dolor sit amet " * (15 * 1024 * 1024 // 28)  # a comma every 28 bytes: ~560,000
    response = await post(gateway, CHAT, {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]})
    assert response.status == 200, response.body[:300]


async def test_half_a_million_tiny_messages_are_refused(gateway: Gateway) -> None:
    messages = [{"role": "user", "content": "x"}] * 500_000
    error = error_of(await post(gateway, CHAT, {"model": "gpt-4o", "messages": messages}))
    assert error["code"] == "too_many_elements"


async def test_more_messages_than_the_cap_are_refused_naming_the_field(gateway: Gateway) -> None:
    messages = [{"role": "user", "content": "x"}] * (MAX_MESSAGES + 1)
    error = error_of(await post(gateway, CHAT, {"model": "gpt-4o", "messages": messages}))
    assert (error["param"], error["code"]) == ("messages", "too_many_elements")
    assert f"{MAX_MESSAGES:,}" in error["message"]


async def test_sixteen_mebibytes_of_words_in_one_message_still_pass(gateway: Gateway) -> None:
    text = "lorem ipsum dolor sit amet " * (15 * 1024 * 1024 // 27)
    response = await post(gateway, CHAT, {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]})
    assert response.status == 200, response.body[:300]


async def test_a_large_body_parsed_in_the_child_process_gets_the_400_an_inline_parse_gives(gateway: Gateway) -> None:
    """Bodies of LARGE_BODY_BYTES or more are parsed in a child process (the loop keeps serving meanwhile)."""
    text = "lorem ipsum dolor sit amet " * (LARGE_BODY_BYTES // 27 + 1)
    raw = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]})
    for bad in (raw[:-1], raw[:-2] + b"\xff}", b"[" + raw + b"]"):
        with pytest.raises(BadRequest) as inline:
            parse_object(bad)
        assert error_of(await post(gateway, CHAT, bad))["message"] == inline.value.message
    assert (await post(gateway, CHAT, raw)).status == 200


async def test_a_body_of_a_million_distinct_keys_is_refused(gateway: Gateway) -> None:
    """The reviewer's shape: 12 MB, under the byte caps, but ~0.5 s of the event loop's CPU to unpickle the
    child's answer. Refused by the exact member count, whether parsed in the child or on the loop."""
    members = b"".join(b'"k%d":0,' % i for i in range(999_000))
    raw = orjson.dumps({"model": "gpt-4o", "messages": HELLO})[:-1] + b',"x":{' + members + b'"z":0}}'
    for body in (raw, raw[:-1] + b',"pad":"' + b"." * LARGE_BODY_BYTES + b'"}'):
        error = error_of(await post(gateway, CHAT, body))
        assert error["code"] == "too_many_members" and f"{MAX_MEMBERS:,}" in error["message"]
    small = orjson.dumps({"model": "gpt-4o", "messages": HELLO, "x": {f"k{i}": 0 for i in range(MAX_MEMBERS)}})
    assert len(small) < LARGE_BODY_BYTES  # small, but its ':' bytes are over the cap: counted in the child
    assert error_of(await post(gateway, CHAT, small))["code"] == "too_many_members"


@pytest.mark.parametrize(
    ("items", "code", "limit"),
    [
        (b"[]," * MAX_CONTAINERS, "too_many_elements", MAX_CONTAINERS),
        (b'"s",' * MAX_STRINGS, "too_many_strings", MAX_STRINGS),
        (b"0.5," * MAX_ELEMENTS, "too_many_elements", MAX_ELEMENTS),
    ],
)
async def test_one_value_past_each_exact_cap_is_refused(gateway: Gateway, items: bytes, code: str, limit: int) -> None:
    raw = orjson.dumps({"model": "gpt-4o", "messages": HELLO})[:-1] + b',"x":[' + items + items[:-1] + b"]}"
    error = error_of(await post(gateway, CHAT, raw))
    assert error["code"] == code and f"{limit:,}" in error["message"]


async def test_the_largest_legitimate_shapes_pass(gateway: Gateway) -> None:
    """OpenAI's largest embeddings request (2,048 inputs of token ids, 300,000 in all), and a chat of
    MAX_MESSAGES messages with 128 tools: far under the caps that bound the event loop's cost."""
    embeddings = {"model": "text-embedding-3-small", "input": [[i % 50_000 for i in range(146)]] * 2048}
    assert (await post(gateway, "/v1/embeddings", embeddings)).status == 200
    schema = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "x"} for i in range(30)}}
    tools = [{"type": "function", "function": {"name": f"f{i}", "parameters": schema}} for i in range(128)]
    messages = [{"role": "user", "content": f"message {i}"} for i in range(MAX_MESSAGES)]
    chat = await post(gateway, CHAT, {"model": "gpt-4o", "messages": messages, "tools": tools})
    assert chat.status == 200, chat.body[:300]


async def test_an_unknown_deployment_is_named_by_the_field_it_came_from(gateway: Gateway) -> None:
    # Not about sizes, but about what validate answers: on the Azure surface the name is in the path.
    azure = await post(
        gateway, "/openai/deployments/not-here/chat/completions", {"messages": HELLO}, {"api-version": "2024-10-21"}
    )
    assert (error_of(azure, 404)["param"], error_of(azure, 404)["code"]) == ("deployment", "DeploymentNotFound")
    openai = await post(gateway, CHAT, {"model": "not-here", "messages": HELLO})
    assert error_of(openai, 404)["param"] == "model"
